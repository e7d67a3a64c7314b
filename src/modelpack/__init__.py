"""modelpack: take a trained model to a verified, optimized, deployable package."""

__version__ = "0.1.0"
