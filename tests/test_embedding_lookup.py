"""EmbeddingLookup (serving/embedding_lookup.py): cache, batching, timeouts, cold-start fallback."""
from __future__ import annotations

import socket
import threading
import time
import uuid

import numpy as np
import pytest

from embeddings import bigtable_store as bts
from embeddings.bigtable_store import BigtableEmbeddingStore
from embeddings.emulator import BigtableEmulator, free_port
from embeddings.parquet_store import ParquetEmbeddingStore
from embeddings.record import COLD_START_USER, EmbeddingBatch, VersionNotCommittedError
from serving.embedding_lookup import EmbeddingLookup, from_env

E = 4
COLD1 = np.full(E, 0.5, np.float32)
COLD2 = np.full(E, -0.5, np.float32)


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = np.array([f"u{i}" for i in range(n)], dtype=object)
    return ids, rng.standard_normal((n, E)).astype(np.float32)


def batches(ids, emb, version, cold):
    return [EmbeddingBatch.create(ids, emb, version, 100),
            EmbeddingBatch.cold_start(cold, version, 100)]


class CountingStore:
    """Delegates to a store; counts calls and users asked; optional delay."""

    def __init__(self, inner, delay_s: float = 0.0):
        self.inner, self.delay_s, self.calls, self.asked = inner, delay_s, 0, []

    def lookup(self, user_ids, model_version, timeout_s=None):
        self.calls += 1
        self.asked.append(list(user_ids))
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.inner.lookup(user_ids, model_version, timeout_s=timeout_s)

    def __repr__(self):
        return f"CountingStore({self.inner!r})"


@pytest.fixture
def parquet_two_versions(tmp_path):
    ids, emb1 = make_data(50, seed=1)
    emb2 = make_data(50, seed=2)[1]
    store = ParquetEmbeddingStore(tmp_path)
    store.write(batches(ids, emb1, "1", COLD1))
    store.write(batches(ids, emb2, "2", COLD2))
    return store, ids, emb1, emb2


def test_known_unknown_and_versions_never_mix(parquet_two_versions):
    store, ids, emb1, emb2 = parquet_two_versions
    lk = EmbeddingLookup(store, E, timeout_s=2.0)
    q = [ids[3], "stranger", ids[7], ids[3]]
    r1 = lk.lookup(q, "1")
    np.testing.assert_array_equal(r1.embeddings, np.stack([emb1[3], COLD1, emb1[7], emb1[3]]))
    assert r1.cold.tolist() == [False, True, False, False] and r1.degraded is None
    assert r1.source.tolist() == ["store"] * 4 and r1.model_version == "1"
    r2 = lk.lookup(q, 2)  # ints are accepted (TF Serving versions)
    np.testing.assert_array_equal(r2.embeddings, np.stack([emb2[3], COLD2, emb2[7], emb2[3]]))
    r1b = lk.lookup(q, "1")  # now from the cache, still version 1's values
    np.testing.assert_array_equal(r1b.embeddings, r1.embeddings)
    assert r1b.source.tolist() == ["cache"] * 4 and r1b.cold.tolist() == r1.cold.tolist()
    lk.close()


def test_misses_go_to_store_in_one_batched_call(parquet_two_versions):
    store, ids, emb1, _ = parquet_two_versions
    counting = CountingStore(store)
    lk = EmbeddingLookup(counting, E, timeout_s=2.0)
    lk.lookup(list(ids[:30]) + ["x", "y"], "1")
    assert counting.calls == 1
    assert sorted(counting.asked[0]) == sorted(list(ids[:30]) + ["x", "y", COLD_START_USER])
    lk.lookup(list(ids[:30]) + ["x", "y"], "1")  # all cached, unknown users included
    assert counting.calls == 1
    res = lk.lookup(list(ids[25:35]), "1")  # only the 5 new ones are fetched, cold row cached
    assert counting.calls == 2 and sorted(counting.asked[1]) == sorted(ids[30:35])
    np.testing.assert_array_equal(res.embeddings, emb1[25:35])
    assert res.source.tolist() == ["cache"] * 5 + ["store"] * 5


def test_lru_bound_respected(parquet_two_versions):
    store, ids, emb1, _ = parquet_two_versions
    counting = CountingStore(store)
    lk = EmbeddingLookup(counting, E, cache_size=5, timeout_s=2.0)
    for i in range(20):
        lk.lookup([ids[i]], "1")
        assert lk.cache_len() <= 5
    assert lk.cache_len() == 5 and counting.calls == 20
    lk.lookup(list(ids[15:20]), "1")  # the 5 most recent are cached
    assert counting.calls == 20
    res = lk.lookup([ids[0]], "1")  # evicted long ago -> store again
    assert counting.calls == 21 and res.source.tolist() == ["store"]
    np.testing.assert_array_equal(res.embeddings[0], emb1[0])
    lk.lookup([ids[16]], "1")  # inserting u0 evicted the least recently used (u15), not u16
    assert counting.calls == 21
    lk.lookup([ids[15]], "1")
    assert counting.calls == 22


def test_slow_store_falls_back_and_saturation_is_bounded(parquet_two_versions):
    store, ids, emb1, _ = parquet_two_versions
    slow = CountingStore(store, delay_s=1.0)
    lk = EmbeddingLookup(slow, E, timeout_s=0.2, max_workers=1,
                         cold_start_fallback=np.full(E, 7.0, np.float32))
    t0 = time.monotonic()
    res = lk.lookup([ids[1], ids[2]], "1")
    elapsed = time.monotonic() - t0
    assert 0.2 <= elapsed < 0.2 + 0.4, elapsed  # waited the timeout, not the 1 s store
    assert res.cold.all() and res.source.tolist() == ["fallback"] * 2
    assert "timed out" in res.degraded and "cold-start default of version '1' unknown" in \
        res.degraded
    np.testing.assert_array_equal(res.embeddings, np.full((2, E), 7.0, np.float32))
    t0 = time.monotonic()
    res = lk.lookup([ids[3]], "1")  # the only worker is still stuck: degrade at once, no queue
    assert time.monotonic() - t0 < 0.15 and "saturated" in res.degraded
    assert slow.calls == 1
    deadline = time.monotonic() + 5
    while lk._abandoned and time.monotonic() < deadline:  # let the abandoned call finish
        time.sleep(0.02)
    slow.delay_s = 0.0  # the store recovers; fallbacks were not cached
    res = lk.lookup([ids[1], ids[2]], "1")
    assert res.degraded is None and not res.cold.any()
    np.testing.assert_array_equal(res.embeddings, emb1[1:3])


def test_uncommitted_version_raises(parquet_two_versions):
    store = parquet_two_versions[0]
    lk = EmbeddingLookup(store, E, timeout_s=2.0)
    with pytest.raises(VersionNotCommittedError, match="'3' is not committed"):
        lk.lookup(["u1"], "3")


def test_dimension_mismatch_is_a_clear_error(parquet_two_versions):
    lk = EmbeddingLookup(parquet_two_versions[0], E + 1, timeout_s=2.0)
    with pytest.raises(ValueError, match=r"configured for E=5"):
        lk.lookup(["u1"], "1")


def test_from_env_parquet(parquet_two_versions, monkeypatch):
    store, ids, emb1, _ = parquet_two_versions
    monkeypatch.setenv("LIMAML_EMBEDDING_STORE", f"parquet:{store.root}")
    monkeypatch.setenv("LIMAML_EMBEDDING_DIM", str(E))
    monkeypatch.setenv("LIMAML_EMBEDDING_TIMEOUT_S", "2")
    lk = from_env()
    np.testing.assert_array_equal(lk.lookup([ids[4]], "1").embeddings[0], emb1[4])
    monkeypatch.setenv("LIMAML_EMBEDDING_STORE", "redis:x")
    with pytest.raises(ValueError, match="redis:x"):
        from_env()


# ------------------------------------------------------------------ Bigtable backend

def _bt_store(client, table_id=None, **kw):
    table = client.instance("limaml").table(table_id or f"lk-{uuid.uuid4().hex[:12]}")
    return BigtableEmbeddingStore(table, **kw)


def test_bigtable_backend_one_read_rows_for_all_users(bigtable_emulator):
    ids, emb = make_data(100, seed=3)
    store = _bt_store(bigtable_emulator.client())
    store.write(batches(ids, emb, "1", COLD1))
    lk = EmbeddingLookup(store, E, timeout_s=5.0)
    lk.lookup([ids[0]], "1")  # warms the version pointer and the cold-start row
    calls = []
    real = store.table.read_rows

    def spy(*a, **kw):
        calls.append(kw.get("row_set"))
        return real(*a, **kw)

    store.table.read_rows = spy
    query = list(ids[1:]) + ["stranger-1", "stranger-2"]
    res = lk.lookup(query, "1")
    # one RPC: 101 unique users + the version pointer row (commit checked in the same read)
    assert len(calls) == 1 and len(calls[0].row_keys) == 102
    assert bts.POINTER_ROW_KEY in calls[0].row_keys
    np.testing.assert_array_equal(res.embeddings[:99], emb[1:])
    np.testing.assert_array_equal(res.embeddings[99:], np.stack([COLD1, COLD1]))
    assert res.cold.tolist() == [False] * 99 + [True, True] and res.degraded is None


def test_store_down_gives_cold_defaults_and_reason():
    ids, emb = make_data(20, seed=4)
    with BigtableEmulator(set_env=False) as emu:
        store = _bt_store(emu.client(), read_timeout_s=0.3)
        store.write(batches(ids, emb, "1", COLD1))
        lk = EmbeddingLookup(store, E, timeout_s=0.3)
        warm = lk.lookup(list(ids[:3]), "1")
        np.testing.assert_array_equal(warm.embeddings, emb[:3])
    # emulator stopped: the store is down
    t0 = time.monotonic()
    res = lk.lookup(list(ids[:5]) + ["stranger"], "1")
    elapsed = time.monotonic() - t0
    assert elapsed < 0.3 + 0.5, elapsed
    np.testing.assert_array_equal(res.embeddings[:3], emb[:3])  # still served from cache
    np.testing.assert_array_equal(res.embeddings[3:], np.stack([COLD1] * 3))  # version's default
    assert res.cold.tolist() == [False] * 3 + [True] * 3
    assert res.source.tolist() == ["cache"] * 3 + ["fallback"] * 3
    assert res.degraded and ("failed" in res.degraded or "timed out" in res.degraded)
    assert "BigtableEmbeddingStore" in res.degraded
    lk.close()


def test_wrong_port_never_raises_and_uses_fallback_vector():
    port = free_port()
    client = BigtableEmulator(port=port, set_env=False).client()  # nothing listens there
    store = _bt_store(client, read_timeout_s=0.2)
    lk = EmbeddingLookup(store, E, timeout_s=0.2,
                         cold_start_fallback=np.full(E, 3.0, np.float32))
    t0 = time.monotonic()
    res = lk.lookup(["a", "b"], "1")
    assert time.monotonic() - t0 < 0.2 + 0.5
    np.testing.assert_array_equal(res.embeddings, np.full((2, E), 3.0, np.float32))
    assert res.cold.all() and "unknown" in res.degraded
    lk.close()


class DelayProxy:
    """TCP proxy that holds every chunk ``delay_s`` before forwarding it (a slow network)."""

    def __init__(self, upstream_port: int, delay_s: float):
        self.upstream_port, self.delay_s = upstream_port, delay_s
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.sock.close()


def test_slow_bigtable_through_delaying_proxy_falls_back(bigtable_emulator):
    ids, emb = make_data(10, seed=5)
    table_id = f"slow-{uuid.uuid4().hex[:8]}"
    _bt_store(bigtable_emulator.client(), table_id).write(batches(ids, emb, "1", COLD1))
    proxy = DelayProxy(bigtable_emulator.port, delay_s=0.25)
    try:
        slow_client = BigtableEmulator(port=proxy.port, set_env=False).client()
        fast_lk = EmbeddingLookup(_bt_store(slow_client, table_id), E, timeout_s=0.1)
        t0 = time.monotonic()
        res = fast_lk.lookup(list(ids[:4]), "1")
        assert time.monotonic() - t0 < 0.1 + 0.3
        assert res.cold.all() and "timed out" in res.degraded
        assert res.source.tolist() == ["fallback"] * 4
        # the same path with a generous budget answers exactly: the fallback was slowness
        patient = EmbeddingLookup(_bt_store(slow_client, table_id, read_timeout_s=10),
                                  E, timeout_s=10)
        ok = patient.lookup(list(ids[:4]), "1")
        assert ok.degraded is None and not ok.cold.any()
        np.testing.assert_array_equal(ok.embeddings, emb[:4])
        fast_lk.close()
        patient.close()
    finally:
        proxy.close()


def test_warm_up_loads_cold_default_so_store_outage_serves_it(parquet_two_versions):
    store, ids, emb1, _ = parquet_two_versions
    slow = CountingStore(store)
    lk = EmbeddingLookup(slow, E, timeout_s=0.1, max_workers=2)
    np.testing.assert_array_equal(lk.warm_up("2"), COLD2)
    slow.delay_s = 0.5  # now the store is too slow
    res = lk.lookup([ids[0]], "2")
    np.testing.assert_array_equal(res.embeddings[0], COLD2)  # the version's own default
    assert res.cold.all() and "timed out" in res.degraded and "unknown" not in res.degraded
    with pytest.raises(VersionNotCommittedError):
        EmbeddingLookup(store, E).warm_up("9")


def test_concurrent_lookups_are_exact(parquet_two_versions):
    store, ids, emb1, emb2 = parquet_two_versions
    lk = EmbeddingLookup(store, E, cache_size=20, timeout_s=5.0)
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(50):
                idx = rng.integers(0, len(ids), size=8)
                version = ("1", "2")[int(rng.integers(0, 2))]
                res = lk.lookup(list(ids[idx]) + ["ghost"], version)
                want = emb1 if version == "1" else emb2
                np.testing.assert_array_equal(res.embeddings[:8], want[idx])
                np.testing.assert_array_equal(res.embeddings[8], COLD1 if version == "1"
                                              else COLD2)
                assert res.degraded is None and lk.cache_len() <= 20
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    lk.close()


def test_peek_answers_one_user_as_lookup_cached_does(parquet_two_versions):
    """``peek`` (one user, the ranker's event loop): None exactly where ``lookup_cached`` is None,
    else its embedding and cold flag; it touches the LRU entry and counts a hit like it."""
    store, ids, emb1, _ = parquet_two_versions
    counting = CountingStore(store)
    lk = EmbeddingLookup(counting, E, timeout_s=2.0, cache_size=2)

    def agree(user, version="1"):
        got, ref = lk.peek(user, version), lk.lookup_cached([user], version)
        assert (got is None) == (ref is None), user
        if got is not None:
            np.testing.assert_array_equal(got[0], ref.embeddings[0])
            assert got[1] == bool(ref.cold[0])
        return got

    assert agree(ids[3]) is None and agree("stranger") is None
    lk.lookup([ids[3], ids[7]], "1")
    assert agree("stranger") is None  # no row, and the cold default is not known yet
    got = agree(ids[7])
    np.testing.assert_array_equal(got[0], emb1[7])
    assert got[1] is False
    got[0][:] = 99.0  # a copy: the cache keeps its own
    np.testing.assert_array_equal(lk.peek(ids[7], "1")[0], emb1[7])
    hits = lk.stats["cache_hits"]
    assert lk.peek(ids[3], "1") is not None and lk.stats["cache_hits"] == hits + 1
    lk.lookup(["stranger"], "1")  # ids[3] was touched last: ids[7] is evicted
    assert agree(ids[7]) is None
    got = agree("stranger")
    np.testing.assert_array_equal(got[0], COLD1)
    assert got[1] is True
    assert agree(ids[3], "2") is None  # another version's cache is separate
    assert counting.calls == 2
    with pytest.raises(TypeError, match="must be str"):
        lk.peek(3, "1")
    with pytest.raises(ValueError, match="model_version"):
        lk.peek(ids[3], "bad version!")
    lk.close()


def test_lookup_cached_answers_from_memory_only_and_like_lookup(parquet_two_versions):
    """``lookup_cached`` (the ranker's event-loop path) never asks the store: None until every
    id (and, for users without a row, the version's cold-start default) is cached, then the
    same embeddings, cold flags and LRU touch as ``lookup``."""
    store, ids, emb1, _ = parquet_two_versions
    counting = CountingStore(store)
    lk = EmbeddingLookup(counting, E, timeout_s=2.0, cache_size=2)
    q = [ids[3], "stranger", ids[7]]
    assert lk.lookup_cached(q, "1") is None and counting.calls == 0
    lk.lookup([ids[3], ids[7]], "1")  # known users cached; the cold default not yet known
    assert lk.lookup_cached([ids[7], "stranger"], "1") is None
    got = lk.lookup_cached([ids[3]], "1")  # touches ids[3]: ids[7] is now least recent
    np.testing.assert_array_equal(got.embeddings, emb1[[3]])
    lk.lookup(["stranger"], "1")  # evicts ids[7], learns the cold default
    assert counting.calls == 2
    assert lk.lookup_cached(q, "1") is None  # ids[7] is gone
    got = lk.lookup_cached([ids[3], "stranger", "stranger"], "1")
    np.testing.assert_array_equal(got.embeddings, np.stack([emb1[3], COLD1, COLD1]))
    assert got.cold.tolist() == [False, True, True] and got.degraded is None
    assert got.source.tolist() == ["cache"] * 3 and got.model_version == "1"
    assert lk.lookup_cached([ids[3]], "2") is None  # another version's cache is separate
    assert counting.calls == 2
    lk.close()
