"""The model version: the integer that tags a trained model, its embeddings and its pushed copy.

It is the ML Metadata id of the Trainer's Model artifact: unique, increasing with every new
training, known to every component downstream of the Trainer (so meta-embedding generation can
tag its vectors before the Pusher runs), and an integer as TF Serving's version folders require.
"""
from tfx import types


def model_version(model: types.Artifact) -> str:
    """Version string of a Model artifact (its MLMD id)."""
    if not model.id:
        raise ValueError(f"model artifact {model.uri} has no ML Metadata id; it must come from a Trainer run")
    return str(model.id)
