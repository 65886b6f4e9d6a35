"""Write throughput and peak memory of the meta-embedding stores (Parquet, Bigtable).

``bench_stores`` writes the same embeddings to each store as a stream of batches (what
meta-embedding generation does) and reports users per second and the peak RSS of this process
during each stage (sampled every few milliseconds with psutil, so it is per stage, unlike
``ru_maxrss``). The Bigtable stage runs against a ``cbtemulator`` started for the occasion unless
a store is given; the emulator's own memory is not counted.
"""
from __future__ import annotations

import os
import resource
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from embeddings.record import EmbeddingBatch, as_user_id_array


class _PeakRss:
    """Samples this process's RSS in a thread; ``peak_mb`` after ``stop``.

    With ``children``, the sum of this process's and its descendants' RSS (worker processes).
    """

    def __init__(self, interval_s: float = 0.005, children: bool = False) -> None:
        self.interval_s = interval_s
        self.children = children
        self.peak = 0
        self._stop = threading.Event()
        try:
            import psutil

            self._proc: Any = psutil.Process(os.getpid())
        except ImportError:  # pragma: no cover - psutil is in the pinned set
            self._proc = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        if self._proc is not None:
            total = int(self._proc.memory_info().rss)
            if self.children:
                import psutil

                for child in self._proc.children(recursive=True):
                    try:
                        total += int(child.memory_info().rss)
                    except psutil.Error:  # exited between the listing and the read
                        pass
            return total
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "_PeakRss":
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def _batches(embeddings: np.ndarray, user_ids: np.ndarray, model_version: str,
             batch_size: int, generated_at: int, cold: bool) -> Iterator[EmbeddingBatch]:
    for start in range(0, embeddings.shape[0], batch_size):
        yield EmbeddingBatch.create(user_ids[start:start + batch_size],
                                    embeddings[start:start + batch_size],
                                    model_version, generated_at)
    if cold:
        yield EmbeddingBatch.cold_start(np.zeros(embeddings.shape[1], np.float32),
                                        model_version, generated_at)


def bench_stores(embeddings: np.ndarray, user_ids: Sequence[str], model_version: str = "bench",
                 stages: Sequence[str] = ("parquet", "bigtable"),
                 out_dir: Optional[str] = None, bigtable_store: Any = None,
                 batch_size: int = 10_000, mutation_chunk_rows: int = 1000
                 ) -> List[Dict[str, Any]]:
    """Measures write throughput of the embedding stores.

    Args:
        embeddings: float32 [N, E].
        user_ids: [N] str, unique.
        model_version: version tag written.
        stages: any of ``"parquet"``, ``"bigtable"``, in order.
        out_dir: Parquet root; a temporary directory (deleted afterwards) if None.
        bigtable_store: a :class:`embeddings.bigtable_store.BigtableEmbeddingStore`; if None, a
            ``cbtemulator`` is started and stopped for the stage.
        batch_size: users per :class:`EmbeddingBatch` in the input stream.
        mutation_chunk_rows: rows per ``mutate_rows`` RPC (Bigtable stage with its own emulator).

    Returns:
        One dict per stage: ``{"stage", "users", "users_per_s", "peak_rss_mb", "seconds",
        "cpu_s"}`` (``cpu_s``: this process's CPU seconds, the emulator's not counted);
        ``users`` counts the user rows (the cold-start row is written but not counted).

    Raises:
        ValueError: unknown stage or mismatched inputs (named).
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    ids = as_user_id_array(user_ids)
    if emb.ndim != 2 or emb.shape[0] != ids.shape[0]:
        raise ValueError(
            f"embeddings must be [N, E] with N = len(user_ids) = {ids.shape[0]}, got {emb.shape}")
    unknown = [s for s in stages if s not in ("parquet", "bigtable")]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; use 'parquet' and/or 'bigtable'")
    results: List[Dict[str, Any]] = []
    gen_at = int(time.time())
    for stage in stages:
        if stage == "parquet":
            from embeddings.parquet_store import ParquetEmbeddingStore

            tmp = None
            root = out_dir
            if root is None:
                tmp = tempfile.TemporaryDirectory(prefix="limaml-embbench-")
                root = tmp.name
            try:
                store = ParquetEmbeddingStore(root)
                with _PeakRss() as rss:
                    t0, c0 = time.perf_counter(), time.process_time()
                    store.write(_batches(emb, ids, model_version, batch_size, gen_at, True))
                    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            finally:
                if tmp is not None:
                    tmp.cleanup()
        else:
            from embeddings.bigtable_store import BigtableEmbeddingStore

            emu = None
            store = bigtable_store
            if store is None:
                from embeddings.emulator import BigtableEmulator

                emu = BigtableEmulator(set_env=False).start()
                table = emu.client().instance("bench").table(f"bench-{uuid.uuid4().hex[:8]}")
                store = BigtableEmbeddingStore(table, mutation_chunk_rows=mutation_chunk_rows)
            try:
                store.ensure_table()
                with _PeakRss() as rss:
                    t0, c0 = time.perf_counter(), time.process_time()
                    store.write(_batches(emb, ids, model_version, batch_size, gen_at, True))
                    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            finally:
                if emu is not None:
                    emu.stop()
        n = int(ids.shape[0])
        results.append({"stage": stage, "users": n,
                        "users_per_s": n / secs if secs > 0 else float("inf"),
                        "peak_rss_mb": round(rss.peak_mb, 1), "seconds": secs,
                        "cpu_s": round(cpu, 2)})
    return results
