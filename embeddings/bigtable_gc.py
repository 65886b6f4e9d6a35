"""Bigtable meta-embedding store: garbage collection of attempt cells and retired versions.

Two kinds of cells go away:

* **Stale attempts** of a committed version (killed or superseded rewrites):
  :meth:`RetentionMixin.delete_stale_attempts` keeps only the committed attempt and the one
  committed before it, so a column never holds more than
  :data:`~embeddings.bigtable_layout.ATTEMPT_CELLS_KEPT` cells while a rewrite is in progress and
  the families' ``MaxVersionsGCRule`` never collects a live cell.
* **Retired versions**: after each commit, :meth:`RetentionMixin.retire_versions` retires versions
  beyond ``keep_versions`` by the serving pins (row ``__meta__#serving``, written by
  :meth:`RetentionMixin.mark_pushed`; policy in :mod:`embeddings.retention`). The pointer cell
  goes first (unreadable at once), then the version's ``e``/``m`` columns.

:class:`RetentionMixin` is one part of :class:`embeddings.bigtable_store.BigtableEmbeddingStore`.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from google.api_core import exceptions as gexc
from google.cloud.bigtable import row_filters as rf
from google.cloud.bigtable.row_data import DEFAULT_RETRY_READ_ROWS

from embeddings.bigtable_layout import (
    EMB_FAMILY,
    META_FAMILY,
    PINS_QUALIFIER,
    PINS_ROW_KEY,
    POINTER_ROW_KEY,
    _qualifier,
    _ts_datetime,
)
from embeddings.record import validate_model_version
from embeddings.retention import ServingPins, versions_to_retire


class RetentionMixin:
    """Deletes stale attempt cells and retires old versions by the serving pins."""

    table: Any
    keep_versions: int
    mutation_chunk_rows: int
    write_timeout_s: float
    read_timeout_s: float
    _pointer_cache: Optional[Tuple[float, Dict[str, Dict]]]
    _lock: threading.Lock

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
