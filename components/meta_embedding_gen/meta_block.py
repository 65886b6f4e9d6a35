"""Loads the trained meta block on a Beam worker (picklable: it carries only a path).

Inside a trained or pushed model folder (see :mod:`components.common.model_layout`)::

    <model>/assets.extra/meta_block/
        meta_block.json, saved_model.pb, variables/, checkpoint/   (trainer.export)
        transform_graph/                                           (copy of the TFT output)
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

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


def meta_blocks_of(serving_model_dir: str) -> Tuple[str, ...]:
    """The model's meta blocks (``ModelConfig.meta_blocks``, e.g. ``("user", "user_x_genre")``),
    read from ``meta_block.json`` without loading the model.

    Raises:
        FileNotFoundError: as :func:`check_meta_block`.
    """
    import json

    import tensorflow as tf

    from trainer.export import META_BLOCK_JSON

    path = os.path.join(check_meta_block(serving_model_dir), META_BLOCK_JSON)
    with tf.io.gfile.GFile(path) as fh:
        info = json.loads(fh.read())
    return tuple(info.get("limaml_config", {}).get("model", {}).get("meta_blocks", ("user",)))


def genre_set_arg(serving_model_dir: str) -> Optional[str]:
    """``genres`` for :func:`generate.GenerateEmbeddings` with this model: ``"catalogue"`` for a
    model with the user × genre block, None for a single-block model."""
    from components.meta_embedding_gen.generate import CATALOGUE

    return CATALOGUE if "user_x_genre" in meta_blocks_of(serving_model_dir) else None


class MetaBlockLoader:
    """Callable returning the trained :class:`trainer.model.LimamlModel` of a model folder."""

    def __init__(self, serving_model_dir: str) -> None:
        self.path = meta_block_dir(serving_model_dir)

    def __call__(self):
        from trainer.export import load_meta_block

        model, _, _ = load_meta_block(self.path)
        return model
