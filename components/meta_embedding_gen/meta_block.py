"""Loads the trained meta block on a Beam worker (picklable: it carries only a path).

Inside a trained or pushed model folder (see :mod:`components.common.model_layout`)::

    <model>/assets.extra/meta_block/
        meta_block.json, saved_model.pb, variables/, checkpoint/   (trainer.export)
        transform_graph/                                           (copy of the TFT output)
"""
from __future__ import annotations

import os

from components.common.model_layout import meta_block_dir

TRANSFORM_GRAPH_SUBDIR = "transform_graph"


def transform_graph_dir(serving_model_dir: str) -> str:
    """The copy of the Transform output inside a trained or pushed model folder."""
    return os.path.join(meta_block_dir(serving_model_dir), TRANSFORM_GRAPH_SUBDIR)


def check_meta_block(serving_model_dir: str) -> str:
    """Returns the meta block folder of a model folder, or raises naming what is missing.

    Raises:
        FileNotFoundError: the model folder does not exist, or holds no meta block
            (``assets.extra/meta_block/meta_block.json``).
    """
    import tensorflow as tf

    from trainer.export import META_BLOCK_JSON

    if not tf.io.gfile.isdir(serving_model_dir):
        raise FileNotFoundError(f"model folder {serving_model_dir} does not exist")
    path = meta_block_dir(serving_model_dir)
    if not tf.io.gfile.exists(os.path.join(path, META_BLOCK_JSON)):
        raise FileNotFoundError(
            f"{serving_model_dir} has no meta block ({os.path.join(path, META_BLOCK_JSON)} is "
            "missing); pass a LiMAML model folder (trained Format-Serving or pushed "
            "<serving_base>/<version>), not a baseline's")
    return path


class MetaBlockLoader:
    """Callable returning the trained :class:`trainer.model.LimamlModel` of a model folder."""

    def __init__(self, serving_model_dir: str) -> None:
        self.path = meta_block_dir(serving_model_dir)

    def __call__(self):
        from trainer.export import load_meta_block

        model, _, _ = load_meta_block(self.path)
        return model
