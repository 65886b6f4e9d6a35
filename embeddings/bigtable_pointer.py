"""Bigtable meta-embedding store: the version pointer (which versions are committed).

The row ``__meta__#versions`` holds one ``m:<version>`` cell per committed version whose value is
the JSON commit record (attempt timestamp, E, user count, commit times). Writing that cell is the
commit (:mod:`embeddings.bigtable_write`); readers read it first and ask only for the committed
attempt's cells (:mod:`embeddings.bigtable_read`). A lookup trusts a cached copy for
``pointer_ttl_s`` seconds; anything that decides what to write or retire reads it fresh.

:class:`VersionPointerMixin` is one part of
:class:`embeddings.bigtable_store.BigtableEmbeddingStore` (whose constructor sets the attributes
declared here).
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from google.api_core import exceptions as gexc
from google.cloud.bigtable import row_filters as rf
from google.cloud.bigtable.row_data import DEFAULT_RETRY_READ_ROWS

from embeddings.bigtable_layout import META_FAMILY, POINTER_ROW_KEY
from embeddings.record import VersionNotCommittedError, validate_model_version


class VersionPointerMixin:
    """Reads (and caches) the version pointer row of a Bigtable embedding table."""

    table: Any
    read_timeout_s: float
    pointer_ttl_s: float
    _pointer_cache: Optional[Tuple[float, Dict[str, Dict]]]
    _lock: threading.Lock

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
