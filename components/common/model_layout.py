"""Layout of a trained LiMAML model folder (``<Model artifact>/Format-Serving``).

The global block SavedModel sits at the root, so TFMA (Evaluator) and TF Serving load the folder
as is; the meta block sits under ``assets.extra/meta_block/`` (TF Serving ignores
``assets.extra``), so a pushed version carries what refresh needs, tied to its version. TF
Serving's warm-up records (replayed when a version loads) sit at :data:`WARMUP_REQUESTS_FILE`.
"""
import os

META_BLOCK_SUBDIR = os.path.join("assets.extra", "meta_block")
# TF Serving's fixed name for a version's warm-up PredictionLogs
WARMUP_REQUESTS_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def meta_block_dir(serving_model_dir: str) -> str:
    """The meta block folder inside a trained or pushed model folder."""
    return os.path.join(serving_model_dir, META_BLOCK_SUBDIR)
