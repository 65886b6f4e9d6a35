"""``limaml serve``'s stack (serving.local_stack) serving a multi-block model end to end.

The run folder is made by hand, as the pipeline lays it out: a multi-block model (real Transform
on synthetic data, :func:`benchmarks.serve_blocks.build_model`) pushed as
``<run>/serving/limaml/1`` with its meta block, its embeddings (MEG's kernel: user rows,
``user#g`` rows, cold-start rows) in a Parquet store recorded in ``<run>/metadata.sqlite`` as a
``limaml.MetaEmbeddings`` artifact of version 1. The stack (model server stand-in over real gRPC,
Parquet store, embedding lookup, ranker HTTP service) answers ``POST /v1/rank``; the reference
is the pushed SavedModel's ``serving_default`` in process, fed ``[e_user, e_user#g]`` read from
the store by key text and ``g`` from the Transform's ``multi_hot`` (no serving code).
"""
from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from components.artifacts.names import META_EMBEDDINGS_TYPE, MODEL_VERSION_PROPERTY
from embeddings.record import COLD_START_USER
from schema import features as F
from serving.local_stack import SERVING_SUBDIR, post_json, rank_url, start_local_stack
from serving.tf_example import serialize_candidates
from trainer.preprocessing import multi_hot

MULTI = ("user", "user_x_genre")


def _record_embeddings(metadata_path: str, store_root: str, version: str) -> None:
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(cfg)
    type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(name=META_EMBEDDINGS_TYPE))
    art = metadata_store_pb2.Artifact(type_id=type_id, uri=store_root)
    art.custom_properties[MODEL_VERSION_PROPERTY].string_value = version
    store.put_artifacts([art])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from benchmarks.serve_blocks import build_model, transform_frame
    from limaml.config import LimamlConfig, ModelConfig
    from limaml.data.synthetic import SyntheticConfig, generate

    root = str(tmp_path_factory.mktemp("multi_serve"))
    cfg = LimamlConfig(model=ModelConfig(meta_hidden=(8,), embedding_dim=4, global_hidden=(16,),
                                         categorical_embedding_dim=4, user_id_buckets=64))
    frame = generate(SyntheticConfig(num_users=30, num_items=40, mean_interactions=10, seed=5))
    built = build_model(root, frame, transform_frame(frame, root, cfg), cfg, MULTI)
    run_dir = os.path.join(root, "run")
    shutil.copytree(os.path.join(built["base"], "1"), os.path.join(run_dir, SERVING_SUBDIR, "1"))
    store_root = str(built["store"].root)
    _record_embeddings(os.path.join(run_dir, "metadata.sqlite"), store_root, "1")
    return dataclasses.make_dataclass("Run", ["dir", "frame", "store", "cfg"])(
        run_dir, frame, built["store"], cfg)


def test_serve_ranks_with_user_and_user_x_genre_embeddings(run):
    frame = run.frame
    user = frame[F.USER_ID].value_counts().index[0]
    first = frame[frame[F.USER_ID] == user].iloc[0]
    user_features = {k: (int(first[k]) if isinstance(first[k], np.integer) else first[k])
                     for k in F.USER_FEATURES}
    items = frame.drop_duplicates(F.ITEM_ID).head(12)
    cands = [{F.ITEM_ID: r[F.ITEM_ID], F.GENRES: r[F.GENRES], F.RELEASE_YEAR: int(r[F.RELEASE_YEAR])}
             for r in items.to_dict("records")]
    stored = run.store.read_version("1")
    table = dict(zip(stored.user_ids, stored.embeddings))

    def reference(user_id):
        embs = []
        for c in cands:
            g = int(np.argmax(multi_hot(tf.constant([c[F.GENRES]]), 64).numpy()[0]))
            u = table.get(user_id, table[COLD_START_USER])
            key = f"{user_id}#{g}" if user_id in table else f"{COLD_START_USER}#{g}"
            # the default genre_combine="residual": a missing genre row is the zero slot
            embs.append(np.concatenate([u, table.get(key, np.zeros_like(u))]))
        loaded = tf.saved_model.load(os.path.join(run.dir, SERVING_SUBDIR, "1"))
        ex = serialize_candidates(user_id, cands, np.stack(embs), user_features)
        return loaded.signatures["serving_default"](examples=tf.constant(ex))["probabilities"].numpy()

    stack = start_local_stack(run.dir, item_cache=False, model_server_binary="")
    try:
        assert stack.ranker.multi_block and "user x genre" in " ".join(stack.describe())
        assert run.cfg.model.genre_combine == "residual" and stack.ranker.genre_fallback == "zero"
        for user_id in (str(user), "nobody"):
            status, body = post_json(rank_url(stack.ranker_url),
                                     {"user_id": user_id, "candidates": cands,
                                      "user_features": user_features})
            assert status == 200, body
            np.testing.assert_allclose(body["scores"], reference(user_id), atol=1e-5)
            assert body["cold_start"] == (user_id == "nobody")
            assert set(body["fallbacks"]) == {"genre_to_user", "user_to_cold", "cold_genre_to_cold"}
        assert body["fallbacks"]["user_to_cold"] == len(cands)
    finally:
        stack.stop()
