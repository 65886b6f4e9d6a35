"""Export of a multi-block model (user + user × genre): the global block takes [e_user, e_user×genre].

A multi-block model on real Transform output (the fixture of tests/test_trainer_export.py), with
random parameters, is exported with ``export_global_block`` / ``export_meta_block``; the exported
signatures take a ``meta_embedding`` of width 2E and score exactly what ``global_forward`` of
the restored model scores with the concatenation, whose two halves both matter (changing either
moves the score).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from schema import features
from tests.test_trainer_export import _example, pipeline  # noqa: F401 (fixture)
from trainer import export, run
from trainer.layout import build_layout
from trainer.model import LimamlModel, global_forward

MULTI = ("user", "user_x_genre")


def test_a_multi_block_model_exports_a_2e_wide_global_block(pipeline, tmp_path):  # noqa: F811
    cfg = pipeline.cfg
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, meta_blocks=MULTI))
    layout = build_layout(cfg.model, run.vocab_sizes_from_transform(pipeline.tft_output))
    trained = LimamlModel(layout, cfg.model, cfg.maml, seed=3)
    rng = np.random.RandomState(2)
    for v in list(trained.global_params.values()) + list(trained.genre_params.values()):
        v.assign(rng.normal(0, 0.3, v.shape))
    serving = str(tmp_path)
    export.export_global_block(os.path.join(serving, "global_block"), trained, pipeline.tft_output)
    export.export_meta_block(os.path.join(serving, "meta_block"), trained, cfg, "5")
    model, _, info = export.load_meta_block(os.path.join(serving, "meta_block"))
    e = cfg.model.embedding_dim
    assert model.genre_params, "the restored model lost its user × genre block"
    assert info["meta_blocks"] == list(MULTI) and info["meta_embedding_width"] == 2 * e
    with open(os.path.join(serving, "meta_block", export.META_BLOCK_JSON)) as fh:
        assert json.load(fh)["limaml_config"]["model"]["meta_blocks"] == list(MULTI)

    loaded = tf.saved_model.load(os.path.join(serving, "global_block"))
    raw_sig = loaded.signatures[export.RAW_SIGNATURE]
    assert raw_sig.structured_input_signature[1][features.META_EMBEDDING].shape.as_list() == [None, 2 * e]
    n = 12
    emb = np.random.RandomState(1).randn(n, 2 * e).astype(np.float32)
    spec = dict(pipeline.raw_spec)
    spec.pop(features.LABEL)
    spec[features.META_EMBEDDING] = tf.io.FixedLenFeature([2 * e], tf.float32)
    rows = [dict(pipeline.raw[i], meta_embedding=emb[i]) for i in range(n)]
    got = loaded.signatures["serving_default"](
        examples=tf.constant([_example(r, spec) for r in rows]))["probabilities"].numpy()
    t = {k: v[:n] for k, v in pipeline.table.items() if v.dtype != object}

    def scores(m):
        return tf.sigmoid(global_forward(model.global_params, tf.constant(m), t, model.layout,
                                         model.model_cfg)).numpy()
    np.testing.assert_allclose(got, scores(emb), rtol=1e-4, atol=1e-5)
    # both halves are read: moving the user half or the genre half moves the scores
    for half in (slice(0, e), slice(e, 2 * e)):
        moved = emb.copy()
        moved[:, half] += 1.0
        assert np.abs(scores(moved) - scores(emb)).max() > 1e-4
    # an E-wide embedding is refused by the signature (a single-block store behind this model)
    bad = dict(spec)
    bad[features.META_EMBEDDING] = tf.io.FixedLenFeature([e], tf.float32)
    narrow = [dict(pipeline.raw[i], meta_embedding=emb[i, :e]) for i in range(2)]
    try:
        loaded.signatures["serving_default"](examples=tf.constant([_example(r, bad) for r in narrow]))
    except (tf.errors.InvalidArgumentError, ValueError):
        pass
    else:
        raise AssertionError("a 2E-wide global block accepted E-wide meta embeddings")
