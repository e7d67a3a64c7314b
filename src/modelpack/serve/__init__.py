"""`modelpack serve`: an inference server for a package (KServe V2, TF Serving REST, /predict)."""
