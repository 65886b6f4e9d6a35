"""Ranker of a multi-block model: [e_user, e_user×genre] per candidate, fallback chain, one read.

A toy global block with the real multi-block serving contract (``serving_default`` on examples
and ``predict_raw`` on raw columns, ``meta_embedding`` [N, 2E]) is served by the stand-in over
real gRPC; a hand-made store (Parquet, and Bigtable on the real emulator) holds, for version 1:

* ``alice`` and ``alice#<Action>`` but no ``alice#<Drama>`` row;
* ``__cold_start__`` and ``__cold_start__#<Action>`` but no ``__cold_start__#<Drama>`` row.

Expected scores are computed in numpy from the hand-made vectors, with the genre buckets from
the Transform's own function (``trainer.preprocessing.multi_hot``), not from the ranker's code:

* alice, Action → [alice, alice#A]; alice, Drama → [alice, alice] (genre_to_user);
* bob (unknown), Action → [cold, cold#A]; bob, Drama → [cold, cold] (user_to_cold and
  cold_genre_to_cold).
"""
from __future__ import annotations

import os
import uuid
from typing import Dict

import numpy as np
import pytest
import tensorflow as tf

from embeddings.record import COLD_START_USER, EmbeddingBatch
from schema import features as F
from serving import model_server
from serving.embedding_lookup import EmbeddingLookup
from serving.ranker import InvalidRequest, Ranker
from trainer.preprocessing import multi_hot

E = 3
NAME = "multi_toy"
W = np.array([0.7, -0.4, 0.25, 1.1, 0.5, -0.9], np.float32)  # user half, genre half
B, C = -0.2, 0.3
ACTION, DRAMA = "Action", "Drama|Comedy"
ALICE = np.array([0.5, -1.0, 2.0], np.float32)
ALICE_ACTION = np.array([1.5, 0.25, -0.5], np.float32)
COLD = np.array([0.1, 0.2, -0.3], np.float32)
COLD_ACTION = np.array([-0.8, 0.6, 0.4], np.float32)


def bucket(genres: str) -> int:
    """Primary genre bucket by the Transform's multi_hot (lowest set bucket)."""
    hot = multi_hot(tf.constant([genres]), 64).numpy()[0]
    return int(np.flatnonzero(hot)[0])


class ToyMultiBlock(tf.Module):
    """p = sigmoid(W · meta_embedding[2E] + b + c (year − 1990) / 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(W)

    def _score(self, emb, year):
        return tf.sigmoid(tf.linalg.matvec(emb, self.w) + B + C * (tf.cast(year, tf.float32) - 1990.0) / 10.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        p = tf.io.parse_example(examples, {F.META_EMBEDDING: tf.io.FixedLenFeature([2 * E], tf.float32),
                                           F.RELEASE_YEAR: tf.io.FixedLenFeature([], tf.int64)})
        return {"probabilities": self._score(p[F.META_EMBEDDING], p[F.RELEASE_YEAR])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.GENRES),
                                  tf.TensorSpec([None], tf.int64, name=F.RELEASE_YEAR),
                                  tf.TensorSpec([None, 2 * E], tf.float32, name=F.META_EMBEDDING)])
    def raw(self, genres, release_year, meta_embedding):
        del genres
        return {"probabilities": self._score(meta_embedding, release_year)}


def expected(pairs, years) -> np.ndarray:
    emb = np.stack([np.concatenate(p) for p in pairs]).astype(np.float64)
    logit = emb @ W.astype(np.float64) + B + C * (np.asarray(years, np.float64) - 1990.0) / 10.0
    return 1.0 / (1.0 + np.exp(-logit))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("multi_toy"))
    m = ToyMultiBlock()
    tf.saved_model.save(m, os.path.join(base, "1"),
                        signatures={"serving_default": m.serve, "predict_raw": m.raw})
    handle = model_server.start_model_server(base, NAME, poll_interval_s=None)
    yield handle
    handle.stop()


def rows() -> EmbeddingBatch:
    a, d = bucket(ACTION), bucket(DRAMA)
    assert a != d
    keys = ["alice", f"alice#{a}", COLD_START_USER, f"{COLD_START_USER}#{a}"]
    return EmbeddingBatch.create(keys, np.stack([ALICE, ALICE_ACTION, COLD, COLD_ACTION]), "1", 0)


class CountingStore:
    """Counts the store reads the lookup makes."""

    def __init__(self, store) -> None:
        self.store, self.calls = store, []

    def lookup(self, user_ids, model_version, timeout_s=None):
        self.calls.append(list(user_ids))
        return self.store.lookup(user_ids, model_version, timeout_s=timeout_s)


@pytest.fixture(params=["parquet", "bigtable"])
def store(request, tmp_path):
    if request.param == "parquet":
        from embeddings.parquet_store import ParquetEmbeddingStore

        s = ParquetEmbeddingStore(str(tmp_path / "store"))
    else:
        from embeddings.bigtable_store import BigtableEmbeddingStore

        emu = request.getfixturevalue("bigtable_emulator")
        s = BigtableEmbeddingStore.open("p", "i", f"mb-{uuid.uuid4().hex[:8]}", client=emu.client("p"))
        s.ensure_table()
    s.write(rows())
    return CountingStore(s)


def candidates():
    years = [1995, 2003, 1987, 2011, 1999]
    genres = [ACTION, DRAMA, DRAMA, ACTION, DRAMA]
    return [{F.ITEM_ID: f"i{i}", F.GENRES: g, F.RELEASE_YEAR: y}
            for i, (g, y) in enumerate(zip(genres, years))], genres, years


@pytest.mark.parametrize("raw_signature", [True, False])
def test_fallback_chain_and_one_batched_read(server, store, raw_signature):
    lookup = EmbeddingLookup(store, E, cache_size=0, timeout_s=5.0)
    ranker = Ranker(server.target, NAME, lookup, timeout_s=10.0, use_raw_signature=raw_signature,
                    meta_blocks=("user", "user_x_genre"))
    cands, genres, years = candidates()
    try:
        before = len(store.calls)
        got = ranker.rank("alice", cands)
        assert len(store.calls) == before + 1, "the user and user×genre rows were not one read"
        assert set(store.calls[-1]) >= {"alice", f"alice#{bucket(ACTION)}", f"alice#{bucket(DRAMA)}"}
        want = expected([(ALICE, ALICE_ACTION) if g == ACTION else (ALICE, ALICE) for g in genres], years)
        np.testing.assert_allclose(got.scores, want, atol=1e-6, rtol=0)
        assert not got.cold_start
        drama = genres.count(DRAMA)
        assert got.fallbacks == {"genre_to_user": drama, "user_to_cold": 0, "cold_genre_to_cold": 0}
        assert got.to_json()["fallbacks"]["genre_to_user"] == drama

        unknown = ranker.rank("bob", cands)
        want = expected([(COLD, COLD_ACTION) if g == ACTION else (COLD, COLD) for g in genres], years)
        np.testing.assert_allclose(unknown.scores, want, atol=1e-6, rtol=0)
        assert unknown.cold_start
        assert unknown.fallbacks == {"genre_to_user": 0, "user_to_cold": 5, "cold_genre_to_cold": drama}
        assert ranker.fallback_counts == {"genre_to_user": drama, "user_to_cold": 5,
                                          "cold_genre_to_cold": drama}
        with pytest.raises(InvalidRequest, match="'alice#3'"):
            ranker.rank("alice#3", cands)
    finally:
        ranker.close()
        lookup.close()


def test_store_down_serves_the_configured_fallback_in_both_slots(server):
    class Down:
        def lookup(self, user_ids, model_version, timeout_s=None):
            raise ConnectionError("store unreachable")

    fallback = np.array([0.3, 0.3, -0.6], np.float32)
    lookup = EmbeddingLookup(Down(), E, timeout_s=1.0, cold_start_fallback=fallback)
    ranker = Ranker(server.target, NAME, lookup, timeout_s=10.0, meta_blocks=("user", "user_x_genre"))
    cands, _, years = candidates()
    try:
        got = ranker.rank("alice", cands)
        np.testing.assert_allclose(got.scores, expected([(fallback, fallback)] * 5, years), atol=1e-6)
        assert got.cold_start and "ConnectionError" in got.degraded
    finally:
        ranker.close()
        lookup.close()


def test_single_block_ranker_is_unchanged_and_bad_blocks_are_named(server):
    class One:
        def lookup(self, user_ids, model_version):
            raise AssertionError("not called")

    with pytest.raises(ValueError, match="user_x_item"):
        Ranker(server.target, NAME, One(), meta_blocks=("user", "user_x_item"))
    r = Ranker(server.target, NAME, One())
    try:
        assert not r.multi_block  # the single-block path: tests/test_ranker.py
    finally:
        r.close()


def test_primary_genres_match_the_transform():
    from serving.multi_block import PrimaryGenres

    pg = PrimaryGenres()
    values = [ACTION, DRAMA, "", None, "Sci-Fi|Action|Drama", DRAMA.encode()]
    want: Dict[int, int] = {}
    for i, v in enumerate(values):
        s = "" if v is None else (v.decode() if isinstance(v, bytes) else v)
        hot = multi_hot(tf.constant([s]), 64).numpy()[0]
        want[i] = int(np.argmax(hot))   # training's rule: argmax (0 when empty)
    np.testing.assert_array_equal(pg(values), [want[i] for i in range(len(values))])
    np.testing.assert_array_equal(pg(values), [want[i] for i in range(len(values))])  # cached


def test_assemble_applies_the_chain_on_found_rows():
    from serving.multi_block import assemble

    u, u3, c3 = np.ones(2, np.float32), np.full(2, 3.0, np.float32), np.full(2, -3.0, np.float32)
    cold = np.full(2, -1.0, np.float32)
    rows = {"u": u, "u#3": u3, "__cold_start__#3": c3, "v#5": np.full(2, 9.0, np.float32)}
    emb, missing, counts = assemble(rows, "u", np.array([5, 3, 5]), cold)
    np.testing.assert_array_equal(emb, [[1, 1, 1, 1], [1, 1, 3, 3], [1, 1, 1, 1]])
    assert not missing and counts == {"genre_to_user": 2, "user_to_cold": 0, "cold_genre_to_cold": 0}
    emb, missing, counts = assemble(rows, "v", np.array([3, 5]), cold)  # v#5 exists, v does not
    np.testing.assert_array_equal(emb, [[-1, -1, -3, -3], [-1, -1, -1, -1]])
    assert missing and counts == {"genre_to_user": 0, "user_to_cold": 2, "cold_genre_to_cold": 1}


def test_a_residual_models_missing_genre_rows_fall_back_to_zero():
    """genre_combine="residual": the genre slot holds the adaptation's change, so a missing
    ``u#g`` (or ``__cold_start__#g``) row is the zero vector, not the user's row."""
    from serving.multi_block import assemble

    u, u3 = np.ones(2, np.float32), np.full(2, 3.0, np.float32)
    cold = np.full(2, -1.0, np.float32)
    rows = {"u": u, "u#3": u3}
    emb, _, counts = assemble(rows, "u", np.array([5, 3]), cold, genre_fallback="zero")
    np.testing.assert_array_equal(emb, [[1, 1, 0, 0], [1, 1, 3, 3]])
    assert counts["genre_to_user"] == 1
    emb, missing, _ = assemble(rows, "v", np.array([3]), cold, genre_fallback="zero")
    np.testing.assert_array_equal(emb, [[-1, -1, 0, 0]])
    assert missing
    with pytest.raises(ValueError, match="genre_fallback 'cold' must be one of"):
        assemble(rows, "u", np.array([3]), cold, genre_fallback="cold")


@pytest.mark.parametrize("combine,want", [("residual", "zero"), ("sum", "user"), ("concat", "user"),
                                          (None, "user")])
def test_the_served_genre_fallback_follows_the_exported_genre_combine(tmp_path, combine, want):
    import json

    from serving.multi_block import served_genre_fallback

    folder = tmp_path / "assets.extra" / "meta_block"
    folder.mkdir(parents=True)
    model = {"meta_blocks": ["user", "user_x_genre"]}
    if combine is not None:
        model["genre_combine"] = combine
    (folder / "meta_block.json").write_text(json.dumps({"limaml_config": {"model": model}}))
    assert served_genre_fallback(str(tmp_path)) == want
    assert served_genre_fallback(str(tmp_path / "elsewhere")) == "user"  # no meta block: a baseline
