"""Bigtable meta-embedding store: batched lookups of one committed version.

A lookup reads the version pointer (cached), then asks in one ``read_rows`` for the users' cells
with qualifier == version **and** timestamp == the committed attempt's (server-side filter,
re-checked client-side), together with the pointer's newest cell of that version: if that cell is
gone (retired) or names another attempt (a rerun committed), the pointer is re-read and the lookup
redone once, or :class:`~embeddings.record.VersionNotCommittedError` is raised. A reader never
sees another version's values nor an uncommitted attempt's.

:class:`LookupMixin` is one part of :class:`embeddings.bigtable_store.BigtableEmbeddingStore`.
"""
from __future__ import annotations

import re
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from google.cloud.bigtable import row_filters as rf
from google.cloud.bigtable.row_data import DEFAULT_RETRY_READ_ROWS
from google.cloud.bigtable.row_set import RowSet

from embeddings.bigtable_layout import (
    EMB_FAMILY,
    META_FAMILY,
    POINTER_ROW_KEY,
    _qualifier,
    _version_filter,
    row_keys,
)
from embeddings.record import (
    COLD_START_USER,
    StoreLookup,
    VersionNotCommittedError,
    as_user_id_array,
)


class LookupMixin:
    """Reads embeddings and metadata of many users for one committed version."""

    table: Any
    read_timeout_s: float

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
