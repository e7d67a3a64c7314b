"""Adapters to the ML frameworks. Each is imported only by the code that needs it."""
