"""Store retention by what is served and blessed (embeddings/retention.py), on the real stores.

MEG commits every run's version before the Evaluator blesses it; the BlockPusher pins what it
pushes. Served versions must survive any number of unblessed runs, in Bigtable (the real
``cbtemulator``) and in Parquet.
"""
from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.block_pusher.pin import open_bigtable_store, pin_pushed_version
from components.meta_embedding_gen import store_io
from embeddings import bigtable_store as bts
from embeddings.bigtable_store import BigtableEmbeddingStore
from embeddings.parquet_store import ParquetEmbeddingStore
from embeddings.record import EmbeddingBatch, VersionNotCommittedError
from embeddings.retention import ServingPins, versions_to_retire
from limaml.config import EmbeddingConfig, LimamlConfig
from serving.embedding_lookup import EmbeddingLookup

E = 4
USERS = np.array([f"user-{i}" for i in range(30)], dtype=object)


def vectors(run: int) -> np.ndarray:
    """Known float32 [30, E] vectors of one run: user i, coordinate j -> run * 100 + i + j / 8."""
    return (run * 100 + np.arange(30)[:, None] + np.arange(E)[None, :] / 8).astype(np.float32)


def stage(tmp_path, run: int) -> str:
    """A MEG staging folder (what generate.stage_embeddings writes) holding run ``run``'s rows."""
    folder = tmp_path / f"staging-{run}"
    folder.mkdir()
    table = pa.Table.from_pydict({
        "user_id": list(USERS), "embedding": [list(map(float, v)) for v in vectors(run)],
        "support_size": [3] * len(USERS), "last_interaction_ts": [1000 + run] * len(USERS),
    }, schema=store_io.STAGING_SCHEMA)
    pq.write_table(table, str(folder / "part-00000.parquet"))
    return str(folder)


def meg_run(cfg: LimamlConfig, tmp_path, store_root: str, run: int) -> None:
    """One pipeline run's MEG commit of version ``str(run)`` (before any blessing)."""
    cold = np.full(E, -float(run), np.float32)
    store_io.write_stores(cfg, stage(tmp_path, run), store_root, str(run), 1_700_000_000 + run, cold)


# ------------------------------------------------------------------------------ the policy
def test_policy_keeps_served_previous_and_newest_and_drops_unblessed_first():
    pins = ServingPins().pushed("1", 10).pushed("2", 20).pushed("5", 50)
    assert (pins.serving, pins.previous, pins.blessed) == ("5", "2", ("1", "2", "5"))
    committed = ["1", "2", "3", "4", "5", "6", "7"]
    # keep 4 of 7: protected 5 (serving), 2 (rollback), 7 (newest); unblessed 3, 4, 6 go before
    # the formerly blessed 1.
    assert versions_to_retire(committed, pins, keep=4) == ["3", "4", "6"]
    assert versions_to_retire(committed, pins, keep=3) == ["3", "4", "6", "1"]
    assert versions_to_retire(committed, pins, keep=1) == ["3", "4", "6", "1"]  # never 2, 5, 7
    assert versions_to_retire(committed, pins, keep=7) == []
    # by commit order alone (no pins) the oldest go first, but never the newest commit
    assert versions_to_retire(["a", "b", "c"], ServingPins(), keep=1) == ["a", "b"]
    # pushing the serving version again keeps the rollback target
    assert pins.pushed("5", 60).previous == "2"
    with pytest.raises(ValueError, match="keep must be >= 1"):
        versions_to_retire(committed, pins, keep=0)


# ------------------------------------------------------------------------------ served survives
@pytest.fixture
def bigtable_cfg(bigtable_emulator, monkeypatch):
    """A config whose MEG writes to a fresh table of the session's emulator (keep 3 versions)."""
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", bigtable_emulator.address)
    table = f"ret-{uuid.uuid4().hex[:8]}"
    return LimamlConfig(embeddings=EmbeddingConfig(
        bigtable_project="p", bigtable_instance="i", bigtable_table=table, keep_versions=3))


def test_three_unblessed_runs_then_the_blessed_version_is_still_served_from_bigtable(
        bigtable_cfg, tmp_path):
    cfg = bigtable_cfg
    table_path = f"p/i/{cfg.embeddings.bigtable_table}"
    meg_run(cfg, tmp_path, str(tmp_path / "meg-1"), 1)
    pin_pushed_version(open_bigtable_store(table_path), "1")  # blessed and pushed: served
    for run in (2, 3, 4):  # three runs whose models are not blessed
        meg_run(cfg, tmp_path, str(tmp_path / f"meg-{run}"), run)

    reader = open_bigtable_store(table_path)
    with EmbeddingLookup(reader, embedding_dim=E, timeout_s=5.0) as lookup:
        res = lookup.lookup(USERS, "1")
    assert not res.cold.any(), f"known users served cold start: {USERS[res.cold].tolist()}"
    assert res.degraded is None
    np.testing.assert_array_equal(res.embeddings, vectors(1))
    # the oldest unblessed run was collected instead (3 kept: served, newest, one more)
    assert reader.committed_versions() == ["1", "3", "4"]
    assert reader.serving_pins().serving == "1"


def test_three_unblessed_runs_then_the_blessed_version_is_still_served_from_parquet(tmp_path):
    cfg = LimamlConfig(embeddings=EmbeddingConfig(keep_versions=3))
    root = str(tmp_path / "shared-store")  # one store for every run (e.g. a refresh target)
    meg_run(cfg, tmp_path, root, 1)
    pin_pushed_version(ParquetEmbeddingStore(root), "1")
    for run in (2, 3, 4):
        meg_run(cfg, tmp_path, root, run)

    reader = ParquetEmbeddingStore(root)
    with EmbeddingLookup(reader, embedding_dim=E, timeout_s=5.0) as lookup:
        res = lookup.lookup(USERS, "1")
    assert not res.cold.any() and res.degraded is None
    np.testing.assert_array_equal(res.embeddings, vectors(1))
    # retention applies to Parquet too: 3 kept, the oldest unblessed (2) collected
    assert reader.committed_versions() == ["1", "3", "4"]
    entries = sorted(os.listdir(root))
    assert [p for p in entries if p.startswith("model_version=")] == [
        "model_version=1", "model_version=3", "model_version=4"]  # 2's files are gone
    assert "_serving.json" in entries and not [p for p in entries if p.startswith((".tmp-", ".trash-"))]


def _batches(version: str, run: int):
    yield EmbeddingBatch.create(USERS, vectors(run), version, 1000 + run)
    yield EmbeddingBatch.cold_start(np.zeros(E, np.float32), version, 1000 + run)


def _stores(kind: str, bigtable_emulator, tmp_path):
    if kind == "parquet":
        return ParquetEmbeddingStore(tmp_path / "store", keep_versions=3)
    table = bigtable_emulator.client().instance("limaml").table(f"ret-{uuid.uuid4().hex[:8]}")
    return BigtableEmbeddingStore(table, keep_versions=3, mutation_chunk_rows=20)


@pytest.mark.parametrize("kind", ["parquet", "bigtable"])
def test_rollback_target_kept_and_formerly_blessed_collected_after_unblessed(
        kind, bigtable_emulator, tmp_path):
    store = _stores(kind, bigtable_emulator, tmp_path)
    store.write(_batches("1", 1))
    store.mark_pushed("1")
    store.write(_batches("2", 2))
    store.mark_pushed("2")                        # serving 2, rollback 1
    store.write(_batches("3", 3))                 # unblessed
    assert store.committed_versions() == ["1", "2", "3"]
    store.write(_batches("4", 4))                 # 4 > keep: the unblessed 3 goes, not 1
    assert store.committed_versions() == ["1", "2", "4"]
    store.mark_pushed("4")                        # serving 4, rollback 2; 1 only "blessed once"
    store.write(_batches("5", 5))
    assert store.committed_versions() == ["2", "4", "5"]
    for version, run in (("2", 2), ("4", 4), ("5", 5)):
        np.testing.assert_array_equal(store.lookup(USERS, version).embeddings, vectors(run))
    with pytest.raises(VersionNotCommittedError):
        store.lookup(USERS, "1")


# ------------------------------------------------------------------------------ Bigtable cells
def _committed_attempt_positions(store: BigtableEmbeddingStore, version: str):
    """Per user row: position of the committed attempt among the column's cells, newest first."""
    ts = int(store.version_info(version)["attempt_ts_us"])
    q = version.encode("ascii")
    out = {}
    for r in store.table.read_rows():
        if r.row_key.startswith(b"__meta__#") and r.row_key != bts.COLD_START_ROW_KEY:
            continue
        for fam in (bts.EMB_FAMILY, bts.META_FAMILY):
            stamps = sorted((c.timestamp_micros for c in r.cells.get(fam, {}).get(q, ())),
                            reverse=True)
            if ts in stamps:
                out[(r.row_key, fam)] = stamps.index(ts)
    return out


def test_killed_rewrites_never_push_committed_cells_out_of_the_gc_window(bigtable_emulator):
    table = bigtable_emulator.client().instance("limaml").table(f"gc-{uuid.uuid4().hex[:8]}")
    store = BigtableEmbeddingStore(table, keep_versions=3, mutation_chunk_rows=10)
    store.write(_batches("7", 1))

    def killed(run: int):
        yield EmbeddingBatch.create(USERS, vectors(run), "7", 2000 + run)
        raise RuntimeError("writer killed")  # every user row already holds this attempt's cells

    for run in (2, 3, 4):
        with pytest.raises(RuntimeError, match="killed"):
            store.write(killed(run))
    window = store.gc_rule().max_num_versions
    positions = _committed_attempt_positions(store, "7")
    assert len(positions) == 2 * (len(USERS) + 1)  # both families of every user + cold row
    outside = {k: p for k, p in positions.items() if p >= window}
    assert not outside, (f"{len(outside)} committed cells outside the newest-{window} GC window "
                         f"(e.g. {sorted(outside.items())[:3]}); Bigtable's GC would delete them")
    np.testing.assert_array_equal(store.lookup(USERS, "7").embeddings, vectors(1))
    store.write(_batches("7", 5))  # a rewrite that finishes: still within the window, new values
    assert max(_committed_attempt_positions(store, "7").values()) < window
    np.testing.assert_array_equal(store.lookup(USERS, "7").embeddings, vectors(5))


def test_reader_with_a_cached_pointer_never_serves_a_retired_version_as_cold(bigtable_emulator):
    table_id = f"ro-{uuid.uuid4().hex[:8]}"
    client = bigtable_emulator.client()
    writer = BigtableEmbeddingStore(client.instance("limaml").table(table_id), keep_versions=1)
    writer.write(_batches("1", 1))
    reader = BigtableEmbeddingStore(client.instance("limaml").table(table_id),
                                    pointer_ttl_s=3600)  # trusts its pointer copy for an hour
    np.testing.assert_array_equal(reader.lookup(USERS[:3], "1").embeddings, vectors(1)[:3])
    writer.write(_batches("2", 2))  # keep 1, nothing pinned: version 1 is retired
    assert writer.committed_versions() == ["2"]
    with EmbeddingLookup(reader, embedding_dim=E, timeout_s=5.0) as lookup:
        with pytest.raises(VersionNotCommittedError, match="'1' is not committed"):
            lookup.lookup(USERS[3:], "1")  # known users: an error (HTTP 503), never cold start


def test_a_narrower_gc_rule_of_an_existing_table_is_widened(bigtable_emulator):
    from google.cloud.bigtable import column_family

    table = bigtable_emulator.client().instance("limaml").table(f"gw-{uuid.uuid4().hex[:8]}")
    table.create(column_families={bts.EMB_FAMILY: column_family.MaxVersionsGCRule(1),
                                  bts.META_FAMILY: column_family.MaxVersionsGCRule(2)})
    BigtableEmbeddingStore(table).ensure_table()
    rules = {name: fam.gc_rule for name, fam in table.list_column_families().items()}
    assert rules == {bts.EMB_FAMILY: column_family.MaxVersionsGCRule(3),
                     bts.META_FAMILY: column_family.MaxVersionsGCRule(3)}
