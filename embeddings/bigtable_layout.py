"""Bigtable meta-embedding store: table layout, row keys and cell codec.

The layout of :class:`embeddings.bigtable_store.BigtableEmbeddingStore` (DESIGN.md section 3; the
store's module docstring has the whole design):

* **Row key** ``<h>#<user_id>`` where ``<h>`` is the first 4 hex characters of md5(user_id)
  (:func:`row_key`); reserved rows ``__meta__#cold_start``, ``__meta__#versions`` (the version
  pointer) and ``__meta__#serving`` (the serving pins).
* **Family ``e``**: qualifier = model version, value = E little-endian float32.
* **Family ``m``**: qualifier = model version, value = 3 little-endian int64
  ``(support_size, last_interaction_ts, generated_at)``; in the pointer row, the JSON commit record.
* **Cell timestamp** = the write attempt's timestamp (:class:`WriteAttempt`, ms granularity).

This module holds those constants, the key and timestamp codecs, the read filter of one version's
cells and the raw SetCell mutation used by bulk writes.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from google.cloud.bigtable import row_filters as rf

from embeddings.record import COLD_START_USER, validate_model_version

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
