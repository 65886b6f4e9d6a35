"""Bigtable meta-embedding store (embeddings/bigtable_store.py) against the real cbtemulator."""
from __future__ import annotations

import hashlib
import re
import uuid

import numpy as np
import pytest
from google.cloud.bigtable import column_family

from embeddings import bigtable_store as bts
from embeddings.bigtable_store import BigtableEmbeddingStore, BigtableWriteError, row_key
from embeddings.parquet_store import ParquetEmbeddingStore
from embeddings.record import COLD_START_USER, EmbeddingBatch, VersionNotCommittedError
from tests.killed_writer import kill_at_marker

E = 8


def make_data(n: int, seed: int, e: int = E):
    rng = np.random.default_rng(seed)
    ids = np.array([f"user-{seed}-{i}" for i in range(n)], dtype=object)
    emb = rng.standard_normal((n, e)).astype(np.float32)
    emb[0, :4] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max, np.finfo(np.float32).tiny]
    return ids, emb


def stream(ids, emb, version, batch=64, cold=None, generated_at=1000):
    for i in range(0, len(ids), batch):
        m = len(ids[i:i + batch])
        yield EmbeddingBatch.create(ids[i:i + batch], emb[i:i + batch], version, generated_at,
                                    support_size=np.arange(i, i + m),
                                    last_interaction_ts=np.full(m, 77))
    cold = np.full(emb.shape[1], 0.25, np.float32) if cold is None else cold
    yield EmbeddingBatch.cold_start(cold, version, generated_at)


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.fixture
def store(bigtable_emulator):
    client = bigtable_emulator.client()
    table = client.instance("limaml").table(f"emb-{uuid.uuid4().hex[:12]}")
    return BigtableEmbeddingStore(table, keep_versions=3, mutation_chunk_rows=50,
                                  write_timeout_s=10, read_timeout_s=5)


def raw_qualifier_rows(table, version: str):
    """Row keys holding any cell with qualifier == version (raw scan, no store logic)."""
    out = []
    for r in table.read_rows():
        for fam in r.cells.values():
            if version.encode() in fam:
                out.append(r.row_key)
                break
    return out


def test_table_created_with_families_and_gc_rule(store):
    assert not store.table.exists()
    ids, emb = make_data(10, seed=1)
    store.write(stream(ids, emb, "v1"))
    fams = store.table.list_column_families()
    assert set(fams) == {"e", "m"}
    for fam in fams.values():
        assert fam.gc_rule == column_family.MaxVersionsGCRule(3)


def test_row_layout_and_cell_bytes(store):
    ids, emb = make_data(30, seed=2)
    store.write(stream(ids, emb, "v1", generated_at=4242))
    for i in (0, 7, 29):
        uid = ids[i]
        key = f"{hashlib.md5(uid.encode()).hexdigest()[:4]}#{uid}".encode()
        assert row_key(uid) == key and re.match(rb"^[0-9a-f]{4}#", key)
        row = store.table.read_row(key)
        assert set(row.cells) == {"e", "m"}
        assert row.cells["e"][b"v1"][0].value == emb[i].astype("<f4").tobytes()
        meta = np.frombuffer(row.cells["m"][b"v1"][0].value, "<i8")
        assert meta.tolist() == [i, 77, 4242]
    cold = store.table.read_row(b"__meta__#cold_start")
    assert cold.cells["e"][b"v1"][0].value == np.full(E, 0.25, "<f4").tobytes()
    pointer = store.table.read_row(b"__meta__#versions")
    assert list(pointer.cells["m"]) == [b"v1"]
    meta, found = store.lookup_metadata([ids[3], "nobody"], "v1")
    assert found.tolist() == [True, False] and meta[0].tolist() == [3, 77, 4242]


def test_parquet_and_bigtable_hold_identical_vectors(store, tmp_path):
    ids, emb = make_data(500, seed=3)
    pstore = ParquetEmbeddingStore(tmp_path)
    pstore.write(stream(ids, emb, "v1"))
    store.write(stream(ids, emb, "v1"))
    query = np.concatenate([ids[::-1], ["nobody", COLD_START_USER]]).astype(object)
    rp, rb = pstore.lookup(query, "v1"), store.lookup(query, "v1")
    np.testing.assert_array_equal(rb.found, rp.found)
    assert rb.found.tolist() == [True] * 500 + [False, True]
    np.testing.assert_array_equal(bits(rb.embeddings[:500]), bits(emb[::-1]))
    np.testing.assert_array_equal(bits(rp.embeddings), bits(rb.embeddings))


def test_versions_never_mix(store):
    ids, emb1 = make_data(120, seed=4)
    emb2 = np.ascontiguousarray(emb1[::-1])
    assert not np.array_equal(emb1, emb2)
    store.write(stream(ids, emb1, "v1", cold=np.full(E, 1.0, np.float32)))
    store.write(stream(ids, emb2, "v2", cold=np.full(E, 2.0, np.float32)))
    np.testing.assert_array_equal(bits(store.lookup(ids, "v1").embeddings), bits(emb1))
    np.testing.assert_array_equal(bits(store.lookup(ids, "v2").embeddings), bits(emb2))
    assert store.cold_start_default("v1")[0] == 1.0 and store.cold_start_default("v2")[0] == 2.0
    assert store.committed_versions() == ["v1", "v2"] and store.latest_committed_version() == "v2"


def _fail_after(store, k):
    """The store's ``MutateRows`` of user rows dies after ``k`` RPCs."""
    real = store._send_entries  # pylint: disable=protected-access
    calls = {"n": 0}

    def wrapper(entries, timeout_s):
        calls["n"] += 1
        if calls["n"] > k:
            raise ConnectionError("injected: writer died half-way")
        return real(entries, timeout_s)

    store._send_entries = wrapper  # pylint: disable=protected-access
    return calls


def test_interrupted_write_keeps_previous_version_and_hides_new(store):
    ids, emb = make_data(400, seed=5)
    store.write(stream(ids, emb, "v1"))
    # A rerun of v1 with other values dies after 3 chunks (150 rows written, newer cells).
    _fail_after(store, 3)
    with pytest.raises(ConnectionError):
        store.write(stream(ids, emb * 0.5, "v1"))
    # A new version v2 dies the same way.
    del store._send_entries  # pylint: disable=protected-access
    _fail_after(store, 3)
    with pytest.raises(ConnectionError):
        store.write(stream(ids, emb + 1, "v2"))
    del store._send_entries  # pylint: disable=protected-access
    assert len(raw_qualifier_rows(store.table, "v2")) == 150  # rows were written ...
    assert store.committed_versions() == ["v1"]                # ... but never committed
    with pytest.raises(VersionNotCommittedError, match=r"'v2' is not committed"):
        store.lookup(ids[:3], "v2")
    fresh = BigtableEmbeddingStore(store.table)  # a new reader sees the same
    np.testing.assert_array_equal(bits(fresh.lookup(ids, "v1").embeddings), bits(emb))
    assert fresh.latest_committed_version() == "v1"


def _inject_status(store, key, code, times):
    """Entries of row ``key`` come back with status ``code`` in the next ``times`` RPCs that
    carry them (after the real write); returns the statuses the store was shown."""
    real = store._send_entries  # pylint: disable=protected-access
    seen = {"left": times, "sends": 0}

    def wrapper(entries, timeout_s):
        statuses = real(entries, timeout_s)
        seen["sends"] += 1
        for i, e in enumerate(entries):
            if e.row_key == key and seen["left"] > 0:
                seen["left"] -= 1
                statuses[i] = (code, f"injected code {code}")
        return statuses

    store._send_entries = wrapper  # pylint: disable=protected-access
    return seen


def test_failed_row_status_is_named_and_blocks_commit(store):
    ids, emb = make_data(60, seed=6)
    # INVALID_ARGUMENT is not transient: no resend, the row is named, nothing is committed
    _inject_status(store, row_key(ids[2]), 3, times=1)
    with pytest.raises(BigtableWriteError) as ei:
        store.write(stream(ids, emb, "v1"))
    key = row_key(ids[2]).decode()
    assert key in str(ei.value) and "injected code 3" in str(ei.value)
    assert ei.value.failed == [(row_key(ids[2]), 3, "injected code 3")]
    del store._send_entries  # pylint: disable=protected-access
    assert store.committed_versions() == []
    with pytest.raises(VersionNotCommittedError):
        store.lookup(ids, "v1")


def test_transient_row_status_is_resent_and_the_write_commits(store):
    """UNAVAILABLE for one row, twice: only that row is sent again (two more RPCs of one entry),
    then the version commits with every row, as ``Table.mutate_rows`` would retry it."""
    ids, emb = make_data(60, seed=7)
    seen = _inject_status(store, row_key(ids[2]), 14, times=2)
    store.mutation_chunk_rows = 1000  # one RPC for the whole version
    store.write(stream(ids, emb, "v1"))
    del store._send_entries  # pylint: disable=protected-access
    assert seen["left"] == 0 and seen["sends"] == 3
    assert store.committed_versions() == ["v1"]
    np.testing.assert_array_equal(bits(store.lookup(ids, "v1").embeddings), bits(emb))


def test_transient_status_past_the_deadline_is_named_not_hung(store):
    ids, emb = make_data(20, seed=8)
    _inject_status(store, row_key(ids[5]), 14, times=10**6)  # never recovers
    store.write_timeout_s = 0.5
    with pytest.raises(BigtableWriteError) as ei:
        store.write(stream(ids, emb, "v1"))
    del store._send_entries  # pylint: disable=protected-access
    assert ei.value.failed == [(row_key(ids[5]), 14, "injected code 14")]
    assert store.committed_versions() == []



def test_rerun_is_idempotent(store):
    ids, emb = make_data(200, seed=7)
    store.write(stream(ids, emb, "v1"))
    first = store.lookup(ids, "v1")
    ts1 = store.version_info("v1")["attempt_ts_us"]
    store.write(stream(ids, emb, "v1"))
    second = store.lookup(ids, "v1")
    assert store.version_info("v1")["attempt_ts_us"] > ts1
    np.testing.assert_array_equal(bits(first.embeddings), bits(second.embeddings))
    np.testing.assert_array_equal(bits(second.embeddings), bits(emb))
    assert store.committed_versions() == ["v1"]


def test_old_versions_are_retired(store):
    store.keep_versions = 2
    ids, emb = make_data(80, seed=8)
    for k, v in enumerate(["v1", "v2", "v3"]):
        store.write(stream(ids, emb + k, v))
    assert store.committed_versions() == ["v2", "v3"]
    assert raw_qualifier_rows(store.table, "v1") == []
    assert len(raw_qualifier_rows(store.table, "v2")) == 82  # 80 users + cold row + pointer
    with pytest.raises(VersionNotCommittedError, match="retired"):
        store.lookup(ids, "v1")
    np.testing.assert_array_equal(bits(store.lookup(ids, "v3").embeddings), bits(emb + 2))


_KILLED_WRITER = r"""
import os, sys, time, numpy as np
from pathlib import Path
from embeddings.bigtable_store import BigtableEmbeddingStore
from embeddings.record import EmbeddingBatch
from embeddings.emulator import BigtableEmulator
host, table_id, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
os.environ["BIGTABLE_EMULATOR_HOST"] = host
from google.cloud import bigtable
client = bigtable.Client(project="limaml-local", admin=True)
store = BigtableEmbeddingStore(client.instance("limaml").table(table_id), mutation_chunk_rows=50)
def gen():
    for i in range(100):
        yield EmbeddingBatch.create([f"k{i}-{j}" for j in range(50)],
                                    np.full((50, 8), 9.0, np.float32), "v2", 5)
        if i == 3:
            marker.write_text("half-way")
            time.sleep(60)  # the parent SIGKILLs us here
store.write(gen())
"""


def test_killed_writer_process_leaves_version_invisible(store, bigtable_emulator, tmp_path):
    ids, emb = make_data(50, seed=9)
    store.write(stream(ids, emb, "v1"))
    marker = tmp_path / "marker"
    table_id = store.table.table_id
    kill_at_marker(_KILLED_WRITER, [bigtable_emulator.address, table_id, marker], marker)
    assert len(raw_qualifier_rows(store.table, "v2")) == 200  # 4 chunks landed
    assert store.committed_versions() == ["v1"]
    with pytest.raises(VersionNotCommittedError):
        store.lookup(["k0-0"], "v2")
    np.testing.assert_array_equal(bits(store.lookup(ids, "v1").embeddings), bits(emb))
    # cleaning up the crashed version's cells
    assert store.delete_version_cells("v2") == 200
    assert raw_qualifier_rows(store.table, "v2") == []


def test_write_rejects_bad_streams(store):
    ids, emb = make_data(20, seed=10)
    with pytest.raises(ValueError, match="no cold-start row"):
        store.write(EmbeddingBatch.create(ids, emb, "v1", 1))
    with pytest.raises(ValueError, match="appear in more than one batch"):
        store.write([EmbeddingBatch.create(ids[:5], emb[:5], "v1", 1),
                     EmbeddingBatch.create(ids[4:], emb[4:], "v1", 1)])
    assert store.committed_versions() == []


def test_missing_table_without_create_raises(bigtable_emulator):
    table = bigtable_emulator.client().instance("limaml").table("absent-" + uuid.uuid4().hex[:8])
    st = BigtableEmbeddingStore(table, create_if_missing=False)
    ids, emb = make_data(3, seed=11)
    with pytest.raises(RuntimeError, match="does not exist"):
        st.write(stream(ids, emb, "v1"))
    assert bts.COLD_START_ROW_KEY == row_key(COLD_START_USER)


def test_rerun_keeps_commit_order_for_retirement(store):
    store.keep_versions = 2
    ids, emb = make_data(10, seed=12)
    store.write(stream(ids, emb, "v1"))
    store.write(stream(ids, emb + 1, "v2"))
    store.write(stream(ids, emb, "v1"))  # rerun of the older version
    assert store.committed_versions() == ["v1", "v2"]
    assert store.latest_committed_version() == "v2"
    store.write(stream(ids, emb + 3, "v3"))
    assert store.committed_versions() == ["v2", "v3"]  # v1 retired, not v2


def test_raw_entries_equal_direct_row_set_cell(store):
    """The raw-protobuf entries hold exactly the mutations ``DirectRow.set_cell`` builds."""
    from embeddings.bigtable_bulk import user_entries
    from embeddings.bigtable_store import EMB_FAMILY, META_FAMILY, WriteAttempt, _ts_datetime

    ids, emb = make_data(5, seed=11)
    batch = EmbeddingBatch.create(ids, emb, "v9", 1234, support_size=[1, 2, 3, 4, 5],
                                  last_interaction_ts=[10, 20, 30, 40, 50])
    attempt = WriteAttempt("v9", 1_700_000_000_123_000, None)
    got = user_entries(attempt, batch)
    assert len(got) == 5 and len(user_entries(attempt, batch, 1, 3)) == 2
    for i, entry in enumerate(got):
        ref = store.table.direct_row(row_key(ids[i]))
        ts = _ts_datetime(attempt.attempt_ts_us)
        ref.set_cell(EMB_FAMILY, b"v9", emb[i].astype("<f4").tobytes(), timestamp=ts)
        ref.set_cell(META_FAMILY, b"v9", np.array([i + 1, 10 * (i + 1), 1234], "<i8").tobytes(),
                     timestamp=ts)
        assert entry.row_key == ref.row_key
        assert [m.SerializeToString() for m in entry.mutations] == \
            [type(m).pb(m).SerializeToString() for m in ref._get_mutations()]
    assert user_entries(attempt, batch, 1, 3)[1].SerializeToString() == got[2].SerializeToString()
