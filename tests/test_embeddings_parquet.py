"""Parquet meta-embedding store (embeddings/parquet_store.py): exact values, atomic versions."""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from embeddings.parquet_store import ParquetEmbeddingStore, batch_to_table
from embeddings.record import COLD_START_USER, EmbeddingBatch, VersionNotCommittedError
from tests.killed_writer import kill_at_marker

E = 8


def make_data(n: int, seed: int, e: int = E):
    """n user ids and float32 [n, e] vectors including awkward bit patterns."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"user-{seed}-{i}" for i in range(n)], dtype=object)
    emb = rng.standard_normal((n, e)).astype(np.float32)
    emb[0, :4] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max, np.finfo(np.float32).tiny]
    return ids, emb


def stream(ids, emb, version, batch=64, cold=None, generated_at=1000, fail_after=None):
    """Generator of batches (+ cold-start row); raises after ``fail_after`` batches if set."""
    for k, i in enumerate(range(0, len(ids), batch)):
        if fail_after is not None and k == fail_after:
            raise RuntimeError("injected failure half-way")
        yield EmbeddingBatch.create(ids[i:i + batch], emb[i:i + batch], version, generated_at,
                                    support_size=np.arange(i, i + len(ids[i:i + batch])),
                                    last_interaction_ts=np.full(len(ids[i:i + batch]), 77))
    cold = np.full(emb.shape[1], 0.25, np.float32) if cold is None else cold
    yield EmbeddingBatch.cold_start(cold, version, generated_at)


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_roundtrip_is_bitwise_and_streams_into_several_files(tmp_path):
    ids, emb = make_data(300, seed=1)
    store = ParquetEmbeddingStore(tmp_path, rows_per_file=128)
    summary = store.write(stream(ids, emb, "v1", batch=50))
    assert summary.num_users == 301 and summary.embedding_dim == E
    vdir = tmp_path / "model_version=v1"
    manifest = json.loads((vdir / "_metadata.json").read_text())
    commit = manifest["commit"]  # the immutable folder the manifest points at
    parts = manifest["files"]
    assert parts == [f"{commit}/part-0000{i}.parquet" for i in range(3)]
    assert sorted(p.name for p in (vdir / commit).iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert sum(pq.ParquetFile(vdir / p).metadata.num_rows for p in parts) == 301
    table = pq.read_table(vdir / parts[0])
    assert table.column_names == ["user_id", "embedding", "model_version", "generated_at",
                                  "support_size", "last_interaction_ts"]
    # lookup in shuffled order, with duplicates and unknowns
    order = np.random.default_rng(0).permutation(300)
    query = np.concatenate([ids[order], ["nobody", ids[5]]]).astype(object)
    res = store.lookup(query, "v1")
    assert res.found.tolist() == [True] * 300 + [False, True]
    np.testing.assert_array_equal(bits(res.embeddings[:300]), bits(emb[order]))
    np.testing.assert_array_equal(bits(res.embeddings[301]), bits(emb[5]))
    np.testing.assert_array_equal(res.embeddings[300], np.zeros(E, np.float32))
    np.testing.assert_array_equal(store.cold_start_default("v1"), np.full(E, 0.25, np.float32))
    full = store.read_version("v1")
    assert list(full.user_ids[:300]) == list(ids)
    np.testing.assert_array_equal(full.support_size[:300], np.arange(300))
    np.testing.assert_array_equal(full.last_interaction_ts[:300], np.full(300, 77))


def test_versions_never_mix(tmp_path):
    ids, emb1 = make_data(100, seed=2)
    emb2 = np.ascontiguousarray(emb1[::-1])  # same users, different known vectors
    store = ParquetEmbeddingStore(tmp_path)
    store.write(stream(ids, emb1, "v1", cold=np.full(E, 1.0, np.float32)))
    store.write(stream(ids, emb2, "v2", cold=np.full(E, 2.0, np.float32)))
    r1, r2 = store.lookup(ids, "v1"), store.lookup(ids, "v2")
    np.testing.assert_array_equal(bits(r1.embeddings), bits(emb1))
    np.testing.assert_array_equal(bits(r2.embeddings), bits(emb2))
    assert store.cold_start_default("v1")[0] == 1.0 and store.cold_start_default("v2")[0] == 2.0
    assert store.committed_versions() == ["v1", "v2"]
    assert store.latest_committed_version() == "v2"


def test_interrupted_write_keeps_previous_version_and_hides_new(tmp_path):
    ids, emb = make_data(200, seed=3)
    store = ParquetEmbeddingStore(tmp_path, rows_per_file=50)
    store.write(stream(ids, emb, "v1"))
    with pytest.raises(RuntimeError, match="injected"):
        store.write(stream(ids, emb + 5, "v1", fail_after=2))  # rerun of v1 dies half-way
    with pytest.raises(RuntimeError, match="injected"):
        store.write(stream(ids, emb + 7, "v2", fail_after=2))  # new version dies half-way
    np.testing.assert_array_equal(bits(store.lookup(ids, "v1").embeddings), bits(emb))
    assert store.committed_versions() == ["v1"]
    with pytest.raises(VersionNotCommittedError, match=r"'v2' is not committed.*\['v1'\]"):
        store.lookup(ids, "v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_version=v1"]  # temp removed


_KILLED_WRITER = r"""
import sys, time, numpy as np
from pathlib import Path
from embeddings.parquet_store import ParquetEmbeddingStore, batch_to_table
from embeddings.record import EmbeddingBatch
root, marker = sys.argv[1], Path(sys.argv[2])
def gen():
    for i in range(100):
        yield EmbeddingBatch.create([f"u{i}-{j}" for j in range(50)],
                                    np.full((50, 8), 9.0, np.float32), "v2", 5)
        if i == 3:
            marker.write_text("half-way")
            time.sleep(60)  # the parent SIGKILLs us here
ParquetEmbeddingStore(root, rows_per_file=60).write(gen())
"""


def test_killed_writer_process_leaves_no_visible_partial_version(tmp_path):
    ids, emb = make_data(100, seed=4)
    store = ParquetEmbeddingStore(tmp_path / "store")
    store.write(stream(ids, emb, "v1"))
    marker = tmp_path / "marker"
    kill_at_marker(_KILLED_WRITER, [tmp_path / "store", marker], marker)
    leftovers = [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and list(leftovers[0].glob("part-*.parquet"))  # it did write
    fresh = ParquetEmbeddingStore(tmp_path / "store")
    assert fresh.committed_versions() == ["v1"]
    with pytest.raises(VersionNotCommittedError):
        fresh.lookup(["u0-0"], "v2")
    np.testing.assert_array_equal(bits(fresh.lookup(ids, "v1").embeddings), bits(emb))
    assert fresh.remove_stale_temp(older_than_s=0) == [leftovers[0].name]


def test_rerun_is_idempotent_and_replaces(tmp_path):
    ids, emb = make_data(150, seed=5)
    store = ParquetEmbeddingStore(tmp_path)
    store.write(stream(ids, emb, "v1"))
    first = store.read_version("v1")
    store.write(stream(ids, emb, "v1"))
    second = store.read_version("v1")
    assert list(first.user_ids) == list(second.user_ids)
    np.testing.assert_array_equal(bits(first.embeddings), bits(second.embeddings))
    assert store.committed_versions() == ["v1"]
    # a rerun with different input replaces the version (the cached copy is reloaded)
    store.write(stream(ids[:10], emb[:10] * 0.5, "v1"))
    res = store.lookup(ids[:20], "v1")
    assert res.found.tolist() == [True] * 10 + [False] * 10
    np.testing.assert_array_equal(bits(res.embeddings[:10]), bits(emb[:10] * 0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_version=v1"]


def test_write_rejects_bad_streams_and_commits_nothing(tmp_path):
    ids, emb = make_data(20, seed=6)
    store = ParquetEmbeddingStore(tmp_path)
    with pytest.raises(ValueError, match="no cold-start row"):
        store.write(EmbeddingBatch.create(ids, emb, "v1", 1))
    with pytest.raises(ValueError, match=r"appear in more than one batch"):
        store.write([EmbeddingBatch.create(ids[:5], emb[:5], "v1", 1),
                     EmbeddingBatch.create(ids[4:], emb[4:], "v1", 1)])
    with pytest.raises(ValueError, match=r"mixed model versions.*'v1' then 'v2'"):
        store.write([EmbeddingBatch.create(ids[:5], emb[:5], "v1", 1),
                     EmbeddingBatch.create(ids[5:], emb[5:], "v2", 1)])
    with pytest.raises(ValueError, match=r"embedding size changed"):
        store.write([EmbeddingBatch.create(ids[:5], emb[:5], "v1", 1),
                     EmbeddingBatch.create(ids[5:], emb[5:, :3], "v1", 1)])
    assert store.committed_versions() == [] and list(tmp_path.iterdir()) == []
    store.write(EmbeddingBatch.create(ids, emb, "v1", 1), require_cold_start=False)
    assert store.cold_start_default("v1") is None
    assert COLD_START_USER not in set(store.read_version("v1").user_ids)


def test_rerun_keeps_commit_order(tmp_path):
    ids, emb = make_data(10, seed=7)
    store = ParquetEmbeddingStore(tmp_path)
    store.write(stream(ids, emb, "v1"))
    store.write(stream(ids, emb, "v2"))
    store.write(stream(ids, emb, "v1"))
    assert store.committed_versions() == ["v1", "v2"]
    assert store.latest_committed_version() == "v2"


def test_reader_racing_50_rewrites_never_sees_a_mix_or_a_gap(tmp_path):
    """Each rewrite k stores value k for every user in 10 files; a load must hold one k only."""
    users = np.array([f"u{i}" for i in range(400)], dtype=object)
    writer = ParquetEmbeddingStore(tmp_path, rows_per_file=40, fsync=False)

    def commit(k: int) -> None:
        writer.write(stream(users, np.full((400, E), float(k), np.float32), "v1", batch=100,
                            cold=np.full(E, float(k), np.float32), generated_at=k))

    commit(0)
    done = threading.Event()
    seen: list = []
    problems: list = []

    def read_loop() -> None:
        reader = ParquetEmbeddingStore(tmp_path)  # another process's view: its own cache
        while not done.is_set():
            try:
                batch = reader.read_version("v1")
            except Exception as exc:  # noqa: BLE001 - any failure to read a committed version
                problems.append(f"{type(exc).__name__}: {exc}")
                continue
            values = np.unique(batch.embeddings)
            if values.size != 1 or batch.num_users != 401:
                problems.append(f"mixed load: values {values.tolist()[:5]}, {batch.num_users} rows")
            seen.append(float(values[0]))

    readers = [threading.Thread(target=read_loop) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for k in range(1, 51):
            commit(k)
    finally:
        done.set()
        for t in readers:
            t.join(timeout=60)
    assert not problems, f"{len(problems)} of {len(seen) + len(problems)} loads bad: {problems[:3]}"
    assert len(set(seen)) > 1, f"readers saw only commits {sorted(set(seen))}: no overlap"
    vdir = tmp_path / "model_version=v1"
    commits = sorted(p.name for p in vdir.iterdir() if p.name.startswith("commit-"))
    assert len(commits) == 2, f"superseded commit folders not collected: {commits}"


def test_crashed_writers_temp_folder_is_cleaned_by_the_next_write_and_only_it(tmp_path):
    store_root = tmp_path / "store"
    ids, emb = make_data(50, seed=8)
    ParquetEmbeddingStore(store_root).write(stream(ids, emb, "v1"))
    marker = tmp_path / "marker"
    kill_at_marker(_KILLED_WRITER, [store_root, marker], marker)
    crashed = [p for p in store_root.iterdir() if p.name.startswith(".tmp-")]
    assert len(crashed) == 1
    old = time.time() - 2 * 3600
    os.utime(crashed[0], (old, old))
    # What the cleanup must leave alone: a foreign folder, a live writer's folder (its lock is
    # held), a crashed folder too recent to be sure, a symlink named like ours.
    foreign = store_root / ".tmp-notes"
    live = store_root / f".tmp-model_version=v3-{'a' * 32}"
    recent = store_root / f".tmp-model_version=v4-{'b' * 32}"
    outside = tmp_path / "outside"
    link = store_root / f".tmp-model_version=v5-{'c' * 32}"
    for d in (foreign, live, recent, outside):
        d.mkdir()
        (d / "keep.txt").write_text("x")
    link.symlink_to(outside, target_is_directory=True)
    lock_fd = os.open(str(live / ".writer.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        for d in (foreign, live, outside):
            os.utime(d, (old, old))
        os.utime(link, (old, old), follow_symlinks=False)
        ParquetEmbeddingStore(store_root).write(stream(ids, emb + 1, "v6"))  # the next write
    finally:
        os.close(lock_fd)
    left = sorted(p.name for p in store_root.iterdir() if p.name.startswith("."))
    assert crashed[0].name not in left, f"the killed writer's {crashed[0].name} was not cleaned"
    assert left == sorted([foreign.name, live.name, recent.name, link.name])
    assert (outside / "keep.txt").exists() and (live / "keep.txt").exists()
    fresh = ParquetEmbeddingStore(store_root)
    assert fresh.committed_versions() == ["v1", "v6"]
    np.testing.assert_array_equal(bits(fresh.lookup(ids, "v1").embeddings), bits(emb))


def test_legacy_layout_stays_readable_and_is_migrated_by_rewrites(tmp_path):
    """Stores written before manifests named a commit folder: parts directly in the version."""
    ids, emb = make_data(30, seed=9)
    vdir = tmp_path / "model_version=v1"
    vdir.mkdir()
    pq.write_table(batch_to_table(EmbeddingBatch.create(ids, emb, "v1", 5)),
                   vdir / "part-00000.parquet")
    (vdir / "_metadata.json").write_text(json.dumps({
        "model_version": "v1", "embedding_dim": E, "num_users": 30, "committed_at_ns": 1,
        "first_committed_at_ns": 1, "files": ["part-00000.parquet"], "has_cold_start": False}))
    store = ParquetEmbeddingStore(tmp_path)
    np.testing.assert_array_equal(bits(store.lookup(ids, "v1").embeddings), bits(emb))
    store.write(stream(ids, emb + 1, "v1"))
    np.testing.assert_array_equal(bits(store.lookup(ids, "v1").embeddings), bits(emb + 1))
    assert (vdir / "part-00000.parquet").exists()  # the replaced copy is kept for readers on it
    store.write(stream(ids, emb + 2, "v1"))
    assert not (vdir / "part-00000.parquet").exists()  # two commits old: collected
    assert len([p for p in vdir.iterdir() if p.name.startswith("commit-")]) == 2
    np.testing.assert_array_equal(bits(store.lookup(ids, "v1").embeddings), bits(emb + 2))
