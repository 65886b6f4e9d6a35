"""Layout of a trained LiMAML model folder (``<Model artifact>/Format-Serving``).

The global block SavedModel sits at the root, so TFMA (Evaluator) and TF Serving load the folder
as is; the meta block sits under ``assets.extra/meta_block/`` (TF Serving ignores
``assets.extra``), so a pushed version carries what refresh needs, tied to its version.
"""
import os

META_BLOCK_SUBDIR = os.path.join("assets.extra", "meta_block")


def meta_block_dir(serving_model_dir: str) -> str:
    """The meta block folder inside a trained or pushed model folder."""
    return os.path.join(serving_model_dir, META_BLOCK_SUBDIR)
