"""BlockPusher: pushes the global block (and the meta block beside it) in TF Serving layout."""
