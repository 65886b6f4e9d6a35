"""Bigtable meta-embedding store: the write and commit protocol.

1. :meth:`WriteProtocolMixin.begin_write` starts an *attempt*: a new cell timestamp, strictly
   larger than the committed attempt's of the same version (for a rerun, cells of killed attempts
   are deleted first, so the GC window keeps the committed cells; :mod:`embeddings.bigtable_gc`).
2. :meth:`WriteProtocolMixin.write_rows` writes user (and cold-start) rows in chunked, parallel
   ``MutateRows`` calls of raw entries (:mod:`embeddings.bigtable_bulk`), from any process;
   every row's status is checked and a failure raises
   :class:`~embeddings.bigtable_layout.BigtableWriteError` naming the failed rows.
3. :meth:`WriteProtocolMixin.commit` writes the version pointer cell last: that single-cell write
   makes the version visible; then versions beyond ``keep_versions`` are retired.

:meth:`WriteProtocolMixin.write` does the three steps for a stream of batches in one process.
:class:`WriteProtocolMixin` is one part of
:class:`embeddings.bigtable_store.BigtableEmbeddingStore`.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from embeddings.bigtable_bulk import user_entries
from embeddings.bigtable_layout import (
    META_FAMILY,
    POINTER_ROW_KEY,
    WriteAttempt,
    _qualifier,
    _ts_datetime,
)
from embeddings.record import EmbeddingBatch, StreamCheck, batches_of, validate_model_version
from embeddings.write_stream import first_batch
from embeddings.write_summary import WriteSummary


class WriteProtocolMixin:
    """Writes a model version's rows as one attempt, then commits it with the pointer cell."""

    table: Any
    mutation_chunk_rows: int
    write_threads: int
    _pointer_cache: Optional[Tuple[float, Dict[str, Dict]]]
    _lock: threading.Lock

    def begin_write(self, model_version: str) -> "WriteAttempt":
        """Starts a write of ``model_version``: a new attempt timestamp, nothing visible yet.

        Creates the table if needed and, for a rerun of a committed version, deletes the cells of
        killed attempts first (:mod:`embeddings.bigtable_store`: GC window). Rows of the attempt can then be
        written by any process (:meth:`write_rows`, e.g. from every Beam worker); the attempt is
        visible only once :meth:`commit` has written the version pointer.

        Returns:
            The (picklable) :class:`WriteAttempt`.
        """
        validate_model_version(model_version)
        self.ensure_table()
        previous = self._pointer(fresh=True).get(model_version)
        attempt_us = time.time_ns() // 1_000_000 * 1000
        if previous is not None:
            attempt_us = max(attempt_us, int(previous["attempt_ts_us"]) + 1000)
            # Killed attempts must not push the committed cells out of the GC window.
            self.delete_stale_attempts(model_version, previous)
        return WriteAttempt(model_version, int(attempt_us), previous)

    def write_rows(self, attempt: "WriteAttempt", batches: Union[EmbeddingBatch, Iterable[EmbeddingBatch]]
                   ) -> int:
        """Writes user (or cold-start) rows of an attempt in parallel ``mutate_rows`` chunks.

        Chunks of ``mutation_chunk_rows`` rows (spanning batches) go out on ``write_threads``
        threads; at most ``2 * write_threads`` chunks are in flight, and a batch's full chunks
        have landed before the next batch is read, so memory stays bounded by the batch, not by
        the stream. Nothing becomes visible (see :meth:`commit`).

        Args:
            attempt: from :meth:`begin_write` (possibly in another process).
            batches: batches of ``attempt.model_version``.

        Returns:
            Rows written.

        Raises:
            BigtableWriteError: some rows failed (named); the attempt must not be committed.
            ValueError: a batch of another version.
        """
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        total = 0
        inflight: deque = deque()  # in submission order: the first failed chunk is the one named
        pending: List[Any] = []
        chunk = self.mutation_chunk_rows
        with ThreadPoolExecutor(max_workers=self.write_threads) as pool:
            try:
                for batch in batches_of(batches):
                    if batch.model_version != attempt.model_version:
                        raise ValueError(f"batch of version {batch.model_version!r} in a write "
                                         f"of version {attempt.model_version!r}")
                    lo = 0
                    while lo < batch.num_users:  # chunks of exactly ``chunk`` rows span batches
                        hi = min(batch.num_users, lo + chunk - len(pending))
                        pending.extend(user_entries(attempt, batch, lo, hi))
                        lo = hi
                        if len(pending) >= chunk:
                            inflight.append(pool.submit(self._mutate_entries, pending))
                            pending = []
                            if len(inflight) >= 2 * self.write_threads:
                                inflight.popleft().result()
                    total += batch.num_users
                    while inflight:  # a batch's full chunks have landed before the next is read
                        inflight.popleft().result()
                if pending:
                    inflight.append(pool.submit(self._mutate_entries, pending))
                while inflight:
                    inflight[0].result()
                    inflight.popleft()
            finally:
                for f in inflight:
                    f.cancel()
        return total

    def commit(self, attempt: "WriteAttempt", num_users: int, embedding_dim: int, generated_at: int,
               has_cold_start: bool) -> None:
        """Commits an attempt whose rows are all written: the version pointer cell, written last.

        Then retires versions beyond ``keep_versions`` by the serving pins.
        """
        q = _qualifier(attempt.model_version)
        previous = attempt.previous
        now_us = time.time_ns() // 1000
        record = {"attempt_ts_us": attempt.attempt_ts_us, "embedding_dim": int(embedding_dim),
                  "num_users": int(num_users),
                  "generated_at": int(generated_at), "committed_at_us": now_us,
                  # a rerun keeps the version's place in the commit order (retirement, latest)
                  "first_committed_at_us": int(previous.get("first_committed_at_us", now_us))
                  if previous is not None else now_us,
                  "previous_attempt_ts_us": int(previous["attempt_ts_us"])
                  if previous is not None else None,
                  "has_cold_start": bool(has_cold_start)}
        prow = self.table.direct_row(POINTER_ROW_KEY)
        prow.set_cell(META_FAMILY, q, json.dumps(record, sort_keys=True).encode("utf-8"),
                      timestamp=_ts_datetime(attempt.attempt_ts_us))
        self._mutate([prow])
        with self._lock:
            self._pointer_cache = None
        self.retire_versions()

    def write(self, batches: Union[EmbeddingBatch, Iterable[EmbeddingBatch]],
              require_cold_start: bool = True) -> WriteSummary:
        """Writes one model version in parallel ``mutate_rows`` chunks, then commits it.

        :meth:`begin_write`, :meth:`write_rows` batch by batch (each checked first), then
        :meth:`commit`. Streams: one input batch and a few chunks of mutations are in memory.

        Args:
            batches: one :class:`EmbeddingBatch` or an iterable of them (same version and E).
            require_cold_start: fail unless the stream holds the :data:`COLD_START_USER` row.

        Returns:
            :class:`WriteSummary` (location = ``<table name>/<version>``).

        Raises:
            BigtableWriteError: some rows failed (named); the version stays uncommitted.
            ValueError: empty input, mixed versions or sizes, a user in two batches, no
                cold-start row. The version stays uncommitted (readers keep any earlier commit).
        """
        t0 = time.perf_counter()
        it, first = first_batch(batches)
        version, dim = first.model_version, first.embedding_dim
        attempt = self.begin_write(version)
        stream = StreamCheck(first)
        generated_at = first.generated_at

        def checked() -> Iterable[EmbeddingBatch]:
            nonlocal generated_at
            batch: Optional[EmbeddingBatch] = first
            while batch is not None:
                stream.check(batch)
                generated_at = max(generated_at, batch.generated_at)
                yield batch
                batch = next(it, None)

        total = self.write_rows(attempt, checked())
        if require_cold_start and not stream.has_cold:
            raise ValueError(
                f"version {version!r} has no cold-start row: add "
                f"EmbeddingBatch.cold_start(<un-adapted meta block output>, {version!r}, ...) "
                "to the stream (or pass require_cold_start=False); nothing was committed")
        self.commit(attempt, total, dim, generated_at, stream.has_cold)
        return WriteSummary(version, total, dim, f"{self.table.name}/{version}",
                            time.perf_counter() - t0)
