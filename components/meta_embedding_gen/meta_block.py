"""Loads the trained meta block on a Beam worker (picklable: it carries only a path)."""
from __future__ import annotations

from components.common.model_layout import meta_block_dir


class MetaBlockLoader:
    """Callable returning the trained :class:`trainer.model.LimamlModel` of a model folder."""

    def __init__(self, serving_model_dir: str) -> None:
        self.path = meta_block_dir(serving_model_dir)

    def __call__(self):
        from trainer.export import load_meta_block

        model, _, _ = load_meta_block(self.path)
        return model
