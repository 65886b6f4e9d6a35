"""A small real LiMAML global block for serving tests, without the pipeline.

A real Transform (``trainer.preprocessing.preprocessing_fn`` through ``tft_beam``, raw features
declared ``VarLenFeature`` as the pipeline's schema does) on 40 synthetic users, an untrained
``LimamlModel`` on its layout (scores need not be good, only the same on every path), exported
with ``trainer.export.export_global_block`` to ``<base>/1``. Built once per session (~20 s).

Use: ``from limaml_serving_fixture import limaml_served`` (or ``tests.limaml_serving_fixture``).
"""
from __future__ import annotations

import os
import types
from typing import Any, Dict, List

import numpy as np
import pytest

from limaml.config import LimamlConfig, MamlConfig, ModelConfig
from schema import features as F

_CACHE: Dict[str, Any] = {}


def _build(root: str) -> types.SimpleNamespace:
    import tensorflow_transform as tft

    from benchmarks.serve_blocks import transform_frame
    from limaml.data.synthetic import SyntheticConfig, generate
    from trainer import export
    from trainer.layout import build_layout
    from trainer.model import LimamlModel
    from trainer.run import vocab_sizes_from_transform

    cfg = LimamlConfig(model=ModelConfig(meta_hidden=(8,), embedding_dim=4, global_hidden=(16,),
                                         categorical_embedding_dim=4, user_id_buckets=64),
                       maml=MamlConfig(inner_lr=0.3, adaptation_steps=1))
    frame = generate(SyntheticConfig(num_users=40, num_items=30, mean_interactions=10,
                                     sigma_interactions=0.3, seed=7))
    transform_dir = transform_frame(frame, root, cfg)
    tft_output = tft.TFTransformOutput(transform_dir)
    layout = build_layout(cfg.model, vocab_sizes_from_transform(tft_output))
    model = LimamlModel(layout, cfg.model, cfg.maml, seed=3)
    base = os.path.join(root, "serving")
    export.export_global_block(os.path.join(base, "1"), model, tft_output)
    items = (frame[[F.ITEM_ID] + list(F.ITEM_FEATURES)].drop_duplicates(F.ITEM_ID)
             .to_dict("records"))
    items = [{k: (int(v) if isinstance(v, (np.integer,)) else v) for k, v in it.items()}
             for it in items]
    users = frame.drop_duplicates(F.USER_ID).head(5)
    user_features: List[Dict[str, Any]] = [
        {k: r[k] for k in F.USER_FEATURES} for r in users.to_dict("records")]
    return types.SimpleNamespace(base=base, version_dir=os.path.join(base, "1"), items=items,
                                 user_ids=list(users[F.USER_ID]), user_features=user_features,
                                 embedding_dim=cfg.model.embedding_dim)


@pytest.fixture(scope="session")
def limaml_served(tmp_path_factory) -> types.SimpleNamespace:
    """``base`` (TF Serving layout, version 1), ``items`` (raw item rows), ``user_ids``,
    ``user_features`` (one dict per user id), ``embedding_dim``."""
    if "served" not in _CACHE:
        _CACHE["served"] = _build(str(tmp_path_factory.mktemp("limaml_served")))
    return _CACHE["served"]


__all__ = ["limaml_served"]
