"""Bigtable meta-embedding store (production online store; tests run it on ``cbtemulator``).

Layout (DESIGN.md section 3):

* **Row key** ``<h>#<user_id>`` where ``<h>`` is the first 4 hex characters of md5(user_id):
  consecutive user ids land in different tablets, so bulk writes do not hot-spot.
  The cold-start default lives in the reserved row ``__meta__#cold_start``; the version pointer
  in ``__meta__#versions`` (``_`` is not a hex digit, so no user key can collide).
* **Family ``e``**: qualifier = model version, value = E little-endian float32 (``4*E`` bytes).
* **Family ``m``**: qualifier = model version, value = 3 little-endian int64
  ``(support_size, last_interaction_ts, generated_at)``; in the pointer row the value is the JSON
  commit record of the version.
* **Cell timestamp** = the *write attempt* timestamp (ms granularity). Every write of a version
  (first run or rerun) gets a new, strictly larger attempt timestamp.

Visibility and atomicity:

1. All user rows (and the cold-start row) are written with ``Table.mutate_rows`` in chunks,
   several chunks in flight at once (:meth:`BigtableEmbeddingStore.write_rows`; a MEG job writes
   them from every Beam worker under one :class:`WriteAttempt`); the status of every row is
   checked and any failure raises :class:`BigtableWriteError` naming the failed row keys.
   Nothing is committed then.
2. Only after every row succeeded, the pointer cell ``m:<version>`` of ``__meta__#versions`` is
   written, holding the attempt timestamp. That single-cell write is the commit.
3. Readers read the pointer first and then ask only for cells with qualifier == version **and**
   timestamp == committed attempt timestamp (server-side filter, re-checked client-side). So a
   reader never sees another version's values, nor cells of a crashed or in-progress attempt
   (including a rerun of an already committed version: readers keep the old attempt until the
   new pointer lands). A rerun with the same input commits identical values.

Attempt cells and the GC rule: every write of a version is a new *attempt* (a new cell timestamp
in the same ``e:<v>``/``m:<v>`` columns), and killed rewrites leave their cells behind. So that the
committed attempt never falls outside the GC window, a rewrite of a committed version first
deletes that version's cells of every attempt except the committed one and the one committed
before it (kept for readers with a cached pointer); the column then holds at most
:data:`ATTEMPT_CELLS_KEPT` = 3 cells during a write (previous commit, commit, the new attempt),
exactly what both families' ``MaxVersionsGCRule(3)`` keeps. Bigtable's own GC therefore never
deletes a live cell (the emulator never applies GC rules; tests check the window themselves).

Readers check the commit in the same ``read_rows``: the pointer row's newest ``m:<v>`` cell is
read with the users' cells; if it is gone (retired) or names another attempt (a rerun committed),
the pointer is re-read and the lookup redone, or :class:`VersionNotCommittedError` is raised. A
retired version is never served as "unknown users" (cold start) from a stale pointer cache.

Retention: each model version is its own qualifier, so the GC rule never removes versions. After
each commit the writer retires versions beyond ``keep_versions`` by what is served and blessed
(:mod:`embeddings.retention`): the serving pins (row ``__meta__#serving``, written by
:meth:`BigtableEmbeddingStore.mark_pushed` when a version is pushed) protect the serving version
and the one before it, the newest commit is protected, unblessed versions go first. Retiring a
version deletes its pointer cell first (unreadable at once), then its ``e``/``m`` columns
(filtered key-only scan, chunked ``mutate_rows``).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import re
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from google.api_core import exceptions as gexc
from google.cloud.bigtable import column_family as cf
from google.cloud.bigtable import row_filters as rf
from google.cloud.bigtable.row_data import DEFAULT_RETRY_READ_ROWS
from google.cloud.bigtable.row_set import RowSet
from google.cloud.bigtable.table import DEFAULT_RETRY
from google.cloud.bigtable_v2.types import data as data_v2

from embeddings.parquet_store import WriteSummary
from embeddings.record import (
    COLD_START_USER,
    EmbeddingBatch,
    StoreLookup,
    StreamCheck,
    VersionNotCommittedError,
    as_user_id_array,
    batches_of,
    validate_model_version,
)
from embeddings.retention import ServingPins, versions_to_retire

EMB_FAMILY = "e"
META_FAMILY = "m"
POINTER_ROW_KEY = b"__meta__#versions"
COLD_START_ROW_KEY = b"__meta__#cold_start"
PINS_ROW_KEY = b"__meta__#serving"
PINS_QUALIFIER = b"pins"
ATTEMPT_CELLS_KEPT = 3
"""Cells per (row, column) the GC rule keeps: previous commit, commit, attempt in progress."""
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_OK = 0


class BigtableWriteError(RuntimeError):
    """Some row mutations failed; ``failed`` lists ``(row_key, code, message)``."""

    def __init__(self, message: str, failed: Sequence[Tuple[bytes, int, str]]) -> None:
        super().__init__(message)
        self.failed = list(failed)


def row_key(user_id: str) -> bytes:
    """Row key of one user: 4 hex chars of md5(user_id) + ``#`` + user_id (UTF-8)."""
    if user_id == COLD_START_USER:
        return COLD_START_ROW_KEY
    return (hashlib.md5(user_id.encode("utf-8")).hexdigest()[:4] + "#" + user_id).encode("utf-8")


def row_keys(user_ids: Union[Sequence[str], np.ndarray]) -> List[bytes]:
    """Row keys of many users (see :func:`row_key`)."""
    return [row_key(u) for u in user_ids]


def _ts_datetime(ts_us: int) -> _dt.datetime:
    return _EPOCH + _dt.timedelta(microseconds=int(ts_us))


def _qualifier(model_version: str) -> bytes:
    return validate_model_version(model_version).encode("ascii")


def _version_filter(qualifier: bytes, ts_us: Optional[int], families: str) -> rf.RowFilter:
    parts: List[rf.RowFilter] = [
        rf.FamilyNameRegexFilter(families),
        # Bigtable regexes must match the whole qualifier; escape the version's '.' and '-'.
        rf.ColumnQualifierRegexFilter(re.escape(qualifier.decode("ascii")).encode("ascii")),
    ]
    if ts_us is not None:
        parts.append(rf.TimestampRangeFilter(
            rf.TimestampRange(start=_ts_datetime(ts_us), end=_ts_datetime(ts_us + 1000))))
    parts.append(rf.CellsColumnLimitFilter(1))
    return rf.RowFilterChain(parts)


_RAW_MUTATION = data_v2.Mutation.pb()
_RAW_SET_CELL = data_v2.Mutation.SetCell.pb()


def _set_cell(family: str, qualifier: bytes, ts_us: int, value: bytes) -> Any:
    """``Mutation(set_cell=...)`` as ``DirectRow.set_cell`` makes it, built on the raw protobuf."""
    return data_v2.Mutation.wrap(_RAW_MUTATION(set_cell=_RAW_SET_CELL(
        family_name=family, column_qualifier=qualifier, timestamp_micros=ts_us, value=value)))


@dataclasses.dataclass(frozen=True)
class WriteAttempt:
    """One write of a model version in progress (picklable: workers write its rows).

    Attributes:
        model_version: the version written.
        attempt_ts_us: cell timestamp of every cell of this attempt (ms granularity).
        previous: the version's commit record before this write (a rerun), or None.
    """

    model_version: str
    attempt_ts_us: int
    previous: Optional[Dict[str, Any]]


class BigtableEmbeddingStore:
    """Writes and reads meta embeddings in one Bigtable table.

    Args:
        table: a ``google.cloud.bigtable.table.Table`` (its instance's client must be ``admin=True``
            if the table may need to be created).
        keep_versions: committed versions kept after each commit (retention by serving pins,
            see :mod:`embeddings.retention`).
        create_if_missing: create the table / missing column families on first write.
        mutation_chunk_rows: rows per ``mutate_rows`` RPC.
        write_threads: ``mutate_rows`` RPCs in flight at once during a write.
        write_timeout_s: deadline of one ``mutate_rows`` (retries included).
        read_timeout_s: default deadline of a lookup's ``read_rows`` (retries included).
        pointer_ttl_s: how long a lookup trusts its cached copy of the version pointer.

    Use :meth:`open` to build one from project / instance / table ids.
    """

    def __init__(self, table: Any, keep_versions: int = 3, create_if_missing: bool = True,
                 mutation_chunk_rows: int = 1000, write_timeout_s: float = 120.0,
                 read_timeout_s: float = 5.0, pointer_ttl_s: float = 30.0,
                 write_threads: int = 4) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        if write_threads < 1:
            raise ValueError(f"write_threads must be >= 1, got {write_threads}")
        if mutation_chunk_rows < 1:
            raise ValueError(f"mutation_chunk_rows must be >= 1, got {mutation_chunk_rows}")
        self.table = table
        self.keep_versions = int(keep_versions)
        self.create_if_missing = create_if_missing
        self.mutation_chunk_rows = int(mutation_chunk_rows)
        self.write_threads = int(write_threads)
        self.write_timeout_s = float(write_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self.pointer_ttl_s = float(pointer_ttl_s)
        self._pointer_cache: Optional[Tuple[float, Dict[str, Dict]]] = None
        self._lock = threading.Lock()
        self._table_ready = False

    @classmethod
    def open(cls, project: str, instance_id: str, table_id: str, client: Any = None,
             **kwargs: Any) -> "BigtableEmbeddingStore":
        """Store on ``projects/<project>/instances/<instance_id>/tables/<table_id>``.

        ``client`` defaults to ``bigtable.Client(project=project, admin=True)``, which honours
        ``BIGTABLE_EMULATOR_HOST``. Extra keyword arguments go to the constructor.
        """
        if client is None:
            from google.cloud import bigtable

            client = bigtable.Client(project=project, admin=True)
        return cls(client.instance(instance_id).table(table_id), **kwargs)

    def __repr__(self) -> str:
        return f"BigtableEmbeddingStore({self.table.name!r})"

    # ------------------------------------------------------------------ admin
    def gc_rule(self) -> cf.MaxVersionsGCRule:
        """GC rule of both families: the newest :data:`ATTEMPT_CELLS_KEPT` cells per column.

        A column is one version's attempts; writes keep at most that many (module docstring).
        """
        return cf.MaxVersionsGCRule(ATTEMPT_CELLS_KEPT)

    def ensure_table(self) -> None:
        """Creates the table with families ``e`` and ``m`` if missing; adds missing families.

        A family whose ``MaxVersionsGCRule`` keeps fewer than :data:`ATTEMPT_CELLS_KEPT` cells
        is widened to :meth:`gc_rule`.

        Raises:
            RuntimeError: the table is missing and ``create_if_missing`` is False.
        """
        if self._table_ready:
            return
        if not self.table.exists():
            if not self.create_if_missing:
                raise RuntimeError(
                    f"Bigtable table {self.table.name} does not exist; create it with families "
                    f"{EMB_FAMILY!r} and {META_FAMILY!r} or pass create_if_missing=True")
            try:
                self.table.create(column_families={
                    EMB_FAMILY: self.gc_rule(), META_FAMILY: self.gc_rule()})
            except gexc.AlreadyExists:
                pass
        families = self.table.list_column_families()
        for fam in (EMB_FAMILY, META_FAMILY):
            if fam not in families:
                self.table.column_family(fam, self.gc_rule()).create()
            elif isinstance(families[fam].gc_rule, cf.MaxVersionsGCRule) and \
                    families[fam].gc_rule.max_num_versions < ATTEMPT_CELLS_KEPT:
                # A table made with a narrower window (older code, keep_versions < 3) would
                # let Bigtable collect committed cells during a rewrite: widen it.
                self.table.column_family(fam, self.gc_rule()).update()
        self._table_ready = True

    # ------------------------------------------------------------------ pointer
    def _read_pointer(self, timeout_s: Optional[float] = None) -> Dict[str, Dict]:
        retry = DEFAULT_RETRY_READ_ROWS.with_deadline(timeout_s or self.read_timeout_s)
        try:
            row = self.table.read_row(POINTER_ROW_KEY, filter_=rf.RowFilterChain([
                rf.FamilyNameRegexFilter(META_FAMILY), rf.CellsColumnLimitFilter(1)]),
                retry=retry)
        except gexc.NotFound:
            return {}
        out: Dict[str, Dict] = {}
        if row is None:
            return out
        for q, cells in row.cells.get(META_FAMILY, {}).items():
            if cells:
                info = json.loads(cells[0].value.decode("utf-8"))
                out[q.decode("ascii")] = info
        return out

    def _pointer(self, timeout_s: Optional[float] = None, fresh: bool = False) -> Dict[str, Dict]:
        now = time.monotonic()
        with self._lock:
            cached = self._pointer_cache
        if not fresh and cached is not None and now - cached[0] < self.pointer_ttl_s:
            return cached[1]
        pointer = self._read_pointer(timeout_s)
        with self._lock:
            self._pointer_cache = (time.monotonic(), pointer)
        return pointer

    def committed_versions(self) -> List[str]:
        """Committed (readable) versions, oldest first commit first (reads the pointer row).

        A rerun of a version does not move it: order is by the version's first commit.
        """
        pointer = self._pointer(fresh=True)
        return [v for v, _ in sorted(pointer.items(), key=lambda kv: (
            kv[1].get("first_committed_at_us", kv[1]["committed_at_us"]), kv[0]))]

    list_versions = committed_versions

    def latest_committed_version(self) -> Optional[str]:
        """The version first committed most recently, or None."""
        versions = self.committed_versions()
        return versions[-1] if versions else None

    def version_info(self, model_version: str, fresh: bool = True,
                     timeout_s: Optional[float] = None) -> Dict:
        """Commit record of a version: attempt_ts_us, embedding_dim, num_users, committed_at_us.

        Raises:
            VersionNotCommittedError: the version is not committed (never written, still being
                written, crashed before its commit, or retired).
        """
        validate_model_version(model_version)
        pointer = self._pointer(timeout_s=timeout_s, fresh=fresh)
        info = pointer.get(model_version)
        if info is None and not fresh:
            pointer = self._pointer(timeout_s=timeout_s, fresh=True)
            info = pointer.get(model_version)
        if info is None:
            raise VersionNotCommittedError(
                f"model version {model_version!r} is not committed in Bigtable table "
                f"{self.table.name} (committed: {sorted(pointer)}); it was never written, is "
                "being written, failed before its commit, or was retired. Run meta-embedding "
                "generation for it or ask for a committed version")
        return info

    def embedding_dim(self, model_version: str) -> int:
        """E of a committed version."""
        return int(self.version_info(model_version)["embedding_dim"])

    # ------------------------------------------------------------------ write
    def _mutate(self, rows: List[Any]) -> None:
        if not rows:
            return
        statuses = self.table.mutate_rows(
            rows, retry=DEFAULT_RETRY.with_deadline(self.write_timeout_s),
            timeout=self.write_timeout_s)
        failed = [(r.row_key, s.code, s.message) for r, s in zip(rows, statuses) if s.code != _OK]
        if len(statuses) != len(rows):
            failed.append((b"<missing statuses>", -1,
                           f"{len(statuses)} statuses for {len(rows)} rows"))
        if failed:
            shown = "; ".join(f"{k.decode('utf-8', 'replace')}: code {c} {m}"
                              for k, c, m in failed[:10])
            raise BigtableWriteError(
                f"{len(failed)} of {len(rows)} row mutations failed in {self.table.name} "
                f"({shown}{' ...' if len(failed) > 10 else ''}); the version was not committed, "
                "rerun the write", failed)

    def begin_write(self, model_version: str) -> "WriteAttempt":
        """Starts a write of ``model_version``: a new attempt timestamp, nothing visible yet.

        Creates the table if needed and, for a rerun of a committed version, deletes the cells of
        killed attempts first (module docstring: GC window). Rows of the attempt can then be
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

    def _row_mutations(self, attempt: "WriteAttempt", batch: EmbeddingBatch) -> List[Any]:
        """One ``DirectRow`` per user with its ``e``/``m`` SetCell mutations.

        The two mutations are built as raw protobufs and wrapped (what ``DirectRow.set_cell``
        builds, same fields, without proto-plus field marshalling, ~10x cheaper per row); the
        attempt timestamp is already a whole millisecond, as ``set_cell`` would make it.
        """
        q = _qualifier(attempt.model_version)
        ts_us = int(attempt.attempt_ts_us)
        emb = np.ascontiguousarray(batch.embeddings, dtype="<f4").view(np.uint8)
        meta = np.ascontiguousarray(np.stack(
            [batch.support_size, batch.last_interaction_ts,
             np.full(batch.num_users, batch.generated_at, dtype=np.int64)], axis=1),
            dtype="<i8").view(np.uint8)
        rows: List[Any] = []
        for key, e, m in zip(row_keys(batch.user_ids), emb, meta):  # per row by API design
            row = self.table.direct_row(key)
            muts = row._get_mutations()  # pylint: disable=protected-access
            muts.append(_set_cell(EMB_FAMILY, q, ts_us, e.tobytes()))
            muts.append(_set_cell(META_FAMILY, q, ts_us, m.tobytes()))
            rows.append(row)
        return rows

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
                        pending.extend(self._row_mutations(attempt, batch.slice(lo, hi)))
                        lo = hi
                        if len(pending) >= chunk:
                            inflight.append(pool.submit(self._mutate, pending))
                            pending = []
                            if len(inflight) >= 2 * self.write_threads:
                                inflight.popleft().result()
                    total += batch.num_users
                    while inflight:  # a batch's full chunks have landed before the next is read
                        inflight.popleft().result()
                if pending:
                    inflight.append(pool.submit(self._mutate, pending))
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
        it = iter(batches_of(batches))
        first = next(it, None)
        if first is None:
            raise ValueError("no batches to write: pass at least one EmbeddingBatch")
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

    def delete_stale_attempts(self, model_version: str, info: Optional[Dict] = None) -> int:
        """Deletes a committed version's cells of attempts that are not (or no longer) needed.

        Keeps the committed attempt and the one committed before it (``previous_attempt_ts_us``);
        removes cells of killed or superseded attempts, so at most :data:`ATTEMPT_CELLS_KEPT`
        cells per column exist while the next attempt is written.

        Args:
            model_version: a committed version.
            info: its commit record (default: read fresh).

        Returns:
            Rows touched.
        """
        q = _qualifier(model_version)
        info = self.version_info(model_version) if info is None else info
        kept = sorted({int(info["attempt_ts_us"])} | (
            {int(info["previous_attempt_ts_us"])} if info.get("previous_attempt_ts_us") else set()))
        ranges: List[rf.TimestampRange] = []
        start: Optional[int] = None
        for ts in kept:  # [start, ts) between kept attempts (ms granularity)
            if start is None or ts > start:
                ranges.append(rf.TimestampRange(
                    start=None if start is None else _ts_datetime(start), end=_ts_datetime(ts)))
            start = ts + 1000
        ranges.append(rf.TimestampRange(start=_ts_datetime(start)))
        scan = self.table.read_rows(
            filter_=rf.RowFilterChain([
                rf.ColumnQualifierRegexFilter(re.escape(q.decode("ascii")).encode("ascii")),
                rf.RowFilterUnion([rf.TimestampRangeFilter(r) for r in ranges]),
                rf.CellsColumnLimitFilter(1), rf.StripValueTransformerFilter(True)]),
            retry=DEFAULT_RETRY_READ_ROWS.with_deadline(self.write_timeout_s))
        def delete(row) -> None:
            for fam in (EMB_FAMILY, META_FAMILY):
                for tr in ranges:
                    row.delete_cell(fam, q, time_range=tr)
        return self._delete_in_chunks(scan, delete)

    def _delete_in_chunks(self, scan: Iterable[Any], delete: Any) -> int:
        """Applies ``delete(direct_row)`` to every user row of ``scan`` (not the pointer or pins
        rows, not rows without cells), in chunks of ``mutation_chunk_rows``; returns rows touched."""
        pending: List[Any] = []
        touched = 0
        for r in scan:
            if r.row_key in (POINTER_ROW_KEY, PINS_ROW_KEY) or not r.cells:
                continue
            row = self.table.direct_row(r.row_key)
            delete(row)
            pending.append(row)
            touched += 1
            if len(pending) >= self.mutation_chunk_rows:
                self._mutate(pending)
                pending = []
        self._mutate(pending)
        return touched

    # ------------------------------------------------------------------ retention
    def serving_pins(self, timeout_s: Optional[float] = None) -> ServingPins:
        """The serving pins (what was pushed), empty before any :meth:`mark_pushed`."""
        retry = DEFAULT_RETRY_READ_ROWS.with_deadline(timeout_s or self.read_timeout_s)
        try:
            row = self.table.read_row(PINS_ROW_KEY, filter_=rf.RowFilterChain([
                rf.FamilyNameRegexFilter(META_FAMILY), rf.CellsColumnLimitFilter(1)]), retry=retry)
        except gexc.NotFound:
            return ServingPins()
        cells = [] if row is None else row.cells.get(META_FAMILY, {}).get(PINS_QUALIFIER, [])
        return ServingPins.from_json(cells[0].value.decode("utf-8")) if cells else ServingPins()

    def mark_pushed(self, model_version: str) -> ServingPins:
        """Records that ``model_version`` was pushed (blessed): retention never collects it.

        The version served before becomes the rollback target (also kept). The BlockPusher calls
        it when it pushes a model.

        Returns:
            The new pins.
        """
        validate_model_version(model_version)
        self.ensure_table()
        now_us = time.time_ns() // 1000
        pins = self.serving_pins().pushed(model_version, now_us)
        row = self.table.direct_row(PINS_ROW_KEY)
        row.set_cell(META_FAMILY, PINS_QUALIFIER, pins.to_json().encode("utf-8"),
                     timestamp=_ts_datetime(now_us // 1000 * 1000))
        self._mutate([row])
        return pins

    def retire_versions(self, keep: Optional[int] = None) -> List[str]:
        """Retires committed versions beyond ``keep`` (default ``keep_versions``) by the pins.

        Never the serving version, the one before it, or the newest commit; unblessed versions
        go first (see :mod:`embeddings.retention`). For each retired version: delete its pointer
        cell (unreadable from then on), then its ``e``/``m`` columns from every row.

        Returns:
            The retired versions.
        """
        keep = self.keep_versions if keep is None else int(keep)
        old = versions_to_retire(self.committed_versions(), self.serving_pins(), keep)
        for version in old:
            q = _qualifier(version)
            prow = self.table.direct_row(POINTER_ROW_KEY)
            prow.delete_cell(META_FAMILY, q)
            self._mutate([prow])
            with self._lock:
                self._pointer_cache = None
            self.delete_version_cells(version)
        return old

    def delete_version_cells(self, model_version: str) -> int:
        """Deletes every ``e:<v>``/``m:<v>`` cell of user and cold-start rows.

        Use for retired versions or to clean up a version whose write crashed. It does not touch
        the pointer; deleting the cells of a committed version makes its users unknown.

        Returns:
            Rows touched.
        """
        q = _qualifier(model_version)
        scan = self.table.read_rows(
            filter_=rf.RowFilterChain([
                rf.ColumnQualifierRegexFilter(re.escape(q.decode("ascii")).encode("ascii")),
                rf.CellsColumnLimitFilter(1), rf.StripValueTransformerFilter(True)]),
            retry=DEFAULT_RETRY_READ_ROWS.with_deadline(self.write_timeout_s))
        def delete(row) -> None:
            row.delete_cell(EMB_FAMILY, q)
            row.delete_cell(META_FAMILY, q)
        return self._delete_in_chunks(scan, delete)

    # ------------------------------------------------------------------ read
    def _read_cells(self, user_ids: np.ndarray, model_version: str, family: str,
                    timeout_s: Optional[float]) -> Tuple[np.ndarray, List[bytes], int]:
        """Unique ids' positions found and their cell values (one read_rows for all keys).

        The same read returns the pointer's newest cell of the version: when it no longer names
        the attempt read (a rerun committed, or the version was retired), the pointer is re-read
        and the read redone once, or :class:`VersionNotCommittedError` raised.
        """
        info = self.version_info(model_version, fresh=False, timeout_s=timeout_s)
        q = _qualifier(model_version)
        keys = row_keys(user_ids)
        row_set = RowSet()
        for k in keys:  # RowSet is built per key by API design; it is one RPC
            row_set.add_row_key(k)
        row_set.add_row_key(POINTER_ROW_KEY)
        pointer_filter = rf.RowFilterChain([
            rf.RowKeyRegexFilter(re.escape(POINTER_ROW_KEY.decode("ascii")).encode("ascii")),
            rf.FamilyNameRegexFilter(META_FAMILY),
            rf.ColumnQualifierRegexFilter(re.escape(q.decode("ascii")).encode("ascii")),
            rf.CellsColumnLimitFilter(1), rf.StripValueTransformerFilter(True)])
        deadline = timeout_s if timeout_s is not None else self.read_timeout_s
        for attempt in range(2):
            ts_us = int(info["attempt_ts_us"])
            rows = self.table.read_rows(
                row_set=row_set,
                filter_=rf.RowFilterUnion([pointer_filter, _version_filter(q, ts_us, family)]),
                retry=DEFAULT_RETRY_READ_ROWS.with_deadline(deadline))
            got_keys: List[bytes] = []
            values: List[bytes] = []
            pointer_ts: Optional[int] = None
            for r in rows:
                cells = r.cells.get(family, {}).get(q, ())
                if r.row_key == POINTER_ROW_KEY:
                    mine = r.cells.get(META_FAMILY, {}).get(q, ())
                    pointer_ts = max((c.timestamp_micros for c in mine), default=None)
                    continue
                # Client-side re-check: exactly this version's committed attempt.
                match = [c for c in cells if c.timestamp_micros == ts_us]
                if match:
                    got_keys.append(r.row_key)
                    values.append(match[0].value)
            if pointer_ts == ts_us:
                break
            # Retired (raises VersionNotCommittedError) or recommitted: read the pointer again.
            info = self.version_info(model_version, fresh=True, timeout_s=timeout_s)
            if attempt == 1:
                raise VersionNotCommittedError(
                    f"model version {model_version!r} in Bigtable table {self.table.name} changed "
                    "twice while it was being read (rewritten or retired); retry the lookup")
        pos = pd.Index(keys).get_indexer(got_keys) if got_keys else np.zeros(0, dtype=np.intp)
        return pos, values, int(info["embedding_dim"])

    def lookup(self, user_ids: Union[Sequence[str], np.ndarray], model_version: str,
               timeout_s: Optional[float] = None) -> StoreLookup:
        """Batched lookup: one ``read_rows`` with a RowSet of all (unique) keys.

        Args:
            user_ids: [N] str, duplicates allowed.
            model_version: a committed version.
            timeout_s: deadline for the RPCs (retries included); default ``read_timeout_s``.

        Returns:
            :class:`StoreLookup`: ``embeddings`` float32 [N, E] (zeros where not found),
            ``found`` bool [N].

        Raises:
            VersionNotCommittedError: the version is not committed.
            google.api_core.exceptions.GoogleAPICallError / RetryError: the store failed.
            ValueError: a stored value has the wrong size for the version's E.
        """
        ids = as_user_id_array(user_ids)
        if ids.size == 0:
            dim = self.embedding_dim(model_version)
            return StoreLookup(np.zeros((0, dim), np.float32), np.zeros(0, bool))
        uniq, inverse = np.unique(ids.astype(str), return_inverse=True)
        pos, values, dim = self._read_cells(uniq.astype(object), model_version, EMB_FAMILY,
                                            timeout_s)
        emb_u = np.zeros((uniq.shape[0], dim), dtype=np.float32)
        found_u = np.zeros(uniq.shape[0], dtype=bool)
        if values:
            blob = b"".join(values)
            if len(blob) != 4 * dim * len(values):
                bad = [v for v in values if len(v) != 4 * dim][0]
                raise ValueError(
                    f"stored embedding of version {model_version!r} has {len(bad)} bytes, "
                    f"expected {4 * dim} (E={dim} float32): the table holds foreign data")
            emb_u[pos] = np.frombuffer(blob, dtype="<f4").reshape(len(values), dim)
            found_u[pos] = True
        return StoreLookup(embeddings=emb_u[inverse], found=found_u[inverse])

    def lookup_metadata(self, user_ids: Union[Sequence[str], np.ndarray], model_version: str,
                        timeout_s: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
        """int64 [N, 3] ``(support_size, last_interaction_ts, generated_at)`` and found [N]."""
        ids = as_user_id_array(user_ids)
        out = np.zeros((ids.shape[0], 3), dtype=np.int64)
        found = np.zeros(ids.shape[0], dtype=bool)
        if ids.size == 0:
            return out, found
        uniq, inverse = np.unique(ids.astype(str), return_inverse=True)
        pos, values, _ = self._read_cells(uniq.astype(object), model_version, META_FAMILY,
                                          timeout_s)
        meta_u = np.zeros((uniq.shape[0], 3), dtype=np.int64)
        found_u = np.zeros(uniq.shape[0], dtype=bool)
        if values:
            meta_u[pos] = np.frombuffer(b"".join(values), dtype="<i8").reshape(len(values), 3)
            found_u[pos] = True
        return meta_u[inverse], found_u[inverse]

    def cold_start_default(self, model_version: str) -> Optional[np.ndarray]:
        """The cold-start embedding [E] of a version, or None if it has none."""
        res = self.lookup([COLD_START_USER], model_version)
        return res.embeddings[0] if res.found[0] else None
