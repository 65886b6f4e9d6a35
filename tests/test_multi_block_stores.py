"""Stores holding both kinds of keys (users and user × genre) in one versioned snapshot.

For the Parquet store and the Bigtable store (real emulator): a snapshot of user rows
``"k<i>"``, genre rows ``"k<i>#<g>"`` and the cold-start rows ``"__cold_start__"`` /
``"__cold_start__#<g>"`` reads back bit-exact; a writer SIGKILLed half-way through a new version
(user and genre rows interleaved, some of both already written) leaves no half snapshot: the new
version is invisible for both kinds and the old one serves both kinds unchanged; a complete
write then makes both kinds visible at once, and retirement removes both kinds' cells.
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from embeddings import entity_keys
from embeddings.record import COLD_START_USER, EmbeddingBatch, VersionNotCommittedError
from tests.killed_writer import kill_at_marker

E = 4
GENRES = (3, 17)


def snapshot(version: str, users: int, offset: float, batch: int = 40):
    """User rows, then their genre rows, per batch of users; cold-start rows last.

    Values: user ``k<i>`` -> ``offset + i``, its genre ``g`` row -> ``offset + i + g / 100``,
    cold -> ``offset - 1``, cold#g -> ``offset - 1 - g / 100`` (every coordinate).
    """
    for lo in range(0, users, batch):
        idx = np.arange(lo, min(users, lo + batch))
        ids = np.array([f"k{i}" for i in idx], dtype=object)
        yield EmbeddingBatch.create(ids, np.repeat((offset + idx)[:, None], E, 1), version, 5)
        keys = entity_keys.genre_keys(ids, GENRES)
        vals = (offset + np.repeat(idx, len(GENRES)) + np.tile(GENRES, len(idx)) / 100.0)
        yield EmbeddingBatch.create(keys, np.repeat(vals[:, None], E, 1), version, 5,
                                    support_size=np.ones(len(keys), np.int64))
    cold_keys = [COLD_START_USER] + [entity_keys.cold_genre_key(g) for g in GENRES]
    cold_vals = np.array([offset - 1] + [offset - 1 - g / 100.0 for g in GENRES])
    yield EmbeddingBatch.create(cold_keys, np.repeat(cold_vals[:, None], E, 1), version, 5)


def expected(keys, offset: float) -> np.ndarray:
    """The vectors of :func:`snapshot`, worked out from the keys' text."""
    out = []
    for k in keys:
        user, _, g = k.partition("#")
        base = offset - 1 if user == COLD_START_USER else offset + int(user[1:])
        sign = -1 if user == COLD_START_USER else 1
        out.append(base + (sign * int(g) / 100.0 if g else 0.0))
    return np.repeat(np.array(out, np.float32)[:, None], E, 1)


KEYS = ["k0", "k0#3", "k0#17", "k59", "k59#17", COLD_START_USER, f"{COLD_START_USER}#3",
        f"{COLD_START_USER}#17"]

_KILLED = r"""
import os, sys, time
from pathlib import Path
kind, where, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
from tests.test_multi_block_stores import snapshot
if kind == "parquet":
    from embeddings.parquet_store import ParquetEmbeddingStore
    store = ParquetEmbeddingStore(where, rows_per_file=50)
else:
    host, table_id = where.split("|")
    os.environ["BIGTABLE_EMULATOR_HOST"] = host
    from google.cloud import bigtable
    from embeddings.bigtable_store import BigtableEmbeddingStore
    client = bigtable.Client(project="limaml-local", admin=True)
    store = BigtableEmbeddingStore(client.instance("limaml").table(table_id), mutation_chunk_rows=30)
def gen():
    for i, b in enumerate(snapshot("v2", 2000, 1000.0)):
        yield b
        if i == 5:  # 3 batches of users and 3 of genre rows handed to the store
            marker.write_text("half-way")
            time.sleep(60)  # the parent SIGKILLs us here
store.write(gen())
"""


@pytest.fixture(params=["parquet", "bigtable"])
def store(request, tmp_path):
    if request.param == "parquet":
        from embeddings.parquet_store import ParquetEmbeddingStore

        s = ParquetEmbeddingStore(tmp_path / "store", rows_per_file=50, keep_versions=2)
        s.where = str(tmp_path / "store")
    else:
        from embeddings.bigtable_store import BigtableEmbeddingStore

        emu = request.getfixturevalue("bigtable_emulator")
        table_id = f"mbs-{uuid.uuid4().hex[:10]}"
        s = BigtableEmbeddingStore(emu.client().instance("limaml").table(table_id), keep_versions=2,
                                   mutation_chunk_rows=30)
        s.where = f"{emu.address}|{table_id}"
    s.kind = request.param
    return s


def test_a_snapshot_with_both_kinds_commits_atomically(store, tmp_path):
    summary = store.write(snapshot("v1", 60, 0.0))
    assert summary.rows == 60 * (1 + len(GENRES)) + 1 + len(GENRES)
    res = store.lookup(KEYS + ["k60", "k0#5"], "v1")
    assert res.found.tolist() == [True] * len(KEYS) + [False, False]
    np.testing.assert_array_equal(res.embeddings[:len(KEYS)], expected(KEYS, 0.0))

    marker = tmp_path / "marker"
    kill_at_marker(_KILLED, [store.kind, store.where, marker], marker)
    # the killed writer did write rows of both kinds (somewhere private), yet v2 is invisible
    if store.kind == "parquet":
        tmp = [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".tmp-")]
        assert len(tmp) == 1 and list(tmp[0].glob("part-*.parquet"))
    else:
        from tests.test_embeddings_bigtable import raw_qualifier_rows

        rows = [k.decode() for k in raw_qualifier_rows(store.table, "v2")]
        landed = {k[5:] for k in rows if k[4:5] == "#"}  # "<4 hex>#<entity key>"
        assert any("#" in k for k in landed) and any("#" not in k for k in landed), landed
    assert store.committed_versions() == ["v1"]
    with pytest.raises(VersionNotCommittedError):
        store.lookup(["k0", "k0#3"], "v2")
    again = store.lookup(KEYS, "v1")
    assert again.found.all()
    np.testing.assert_array_equal(again.embeddings, expected(KEYS, 0.0))

    # a complete v2, then v3: both kinds visible at once; v1 retired for both kinds
    store.write(snapshot("v2", 60, 100.0))
    store.write(snapshot("v3", 30, 200.0))
    assert store.committed_versions() == ["v2", "v3"]
    v2 = store.lookup(KEYS, "v2")
    np.testing.assert_array_equal(v2.embeddings, expected(KEYS, 100.0))
    v3 = store.lookup(KEYS, "v3")
    assert v3.found.tolist() == [True, True, True, False, False, True, True, True]
    with pytest.raises(VersionNotCommittedError):
        store.lookup(["k0#3"], "v1")
    if store.kind == "bigtable":
        from tests.test_embeddings_bigtable import raw_qualifier_rows

        assert raw_qualifier_rows(store.table, "v1") == []
