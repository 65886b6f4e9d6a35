"""Protocol-aware ExampleGen: canonical Parquet -> train (trainable) and eval (query) splits."""
