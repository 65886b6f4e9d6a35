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

1. All user rows (and the cold-start row) are written with ``MutateRows`` in chunks (raw
   protobuf entries, :mod:`embeddings.bigtable_bulk`),
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

Modules (one concept each; this one composes them and sets up the table):

* :mod:`embeddings.bigtable_layout`: row keys, families, reserved rows, cell codec,
  :class:`WriteAttempt`, :class:`BigtableWriteError`.
* :mod:`embeddings.bigtable_pointer`: the version pointer (committed versions, commit records).
* :mod:`embeddings.bigtable_write`: the write and commit protocol.
* :mod:`embeddings.bigtable_gc`: stale-attempt cleanup, serving pins and retirement.
* :mod:`embeddings.bigtable_read`: batched lookups.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Tuple

from google.api_core import exceptions as gexc
from google.cloud.bigtable import column_family as cf
from google.cloud.bigtable.table import DEFAULT_RETRY

from embeddings import bigtable_bulk
from embeddings.bigtable_gc import RetentionMixin
from embeddings.bigtable_layout import (
    _OK,
    ATTEMPT_CELLS_KEPT,
    COLD_START_ROW_KEY,
    EMB_FAMILY,
    META_FAMILY,
    PINS_QUALIFIER,
    PINS_ROW_KEY,
    POINTER_ROW_KEY,
    BigtableWriteError,
    WriteAttempt,
    _qualifier,
    _ts_datetime,
    _version_filter,
    row_key,
    row_keys,
)
from embeddings.bigtable_pointer import VersionPointerMixin
from embeddings.bigtable_read import LookupMixin
from embeddings.bigtable_write import WriteProtocolMixin
from embeddings.record import VersionNotCommittedError
from embeddings.write_summary import WriteSummary

__all__ = [
    "ATTEMPT_CELLS_KEPT", "COLD_START_ROW_KEY", "EMB_FAMILY", "META_FAMILY", "PINS_QUALIFIER",
    "PINS_ROW_KEY", "POINTER_ROW_KEY", "BigtableEmbeddingStore", "BigtableWriteError",
    "VersionNotCommittedError", "WriteAttempt", "WriteSummary", "_qualifier",
    "_ts_datetime", "_version_filter", "row_key", "row_keys",
]


class BigtableEmbeddingStore(VersionPointerMixin, WriteProtocolMixin, RetentionMixin, LookupMixin):
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

    # ------------------------------------------------------------------ mutations
    def _mutate(self, rows: List[Any]) -> None:
        """One ``mutate_rows`` of ``rows``; raises :class:`BigtableWriteError` naming failed rows."""
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
            raise bigtable_bulk.write_error(failed, len(rows), self.table.name)

    def _send_entries(self, entries: List[Any], timeout_s: float) -> List[Tuple[int, str]]:
        """One ``MutateRows`` RPC of raw entries; ``(code, message)`` per entry
        (:func:`embeddings.bigtable_bulk.send_entries` on the table's data client)."""
        table = self.table
        return bigtable_bulk.send_entries(
            table._instance._client.table_data_client,  # pylint: disable=protected-access
            table.name, getattr(table, "_app_profile_id", None), entries, timeout_s)

    def _mutate_entries(self, entries: List[Any]) -> None:
        """Writes raw entries, resending transient failures until ``write_timeout_s``; raises
        :class:`BigtableWriteError` naming rows that failed."""
        bigtable_bulk.mutate_entries(self._send_entries, entries, self.write_timeout_s,
                                     self.table.name)
