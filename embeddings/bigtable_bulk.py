"""Bulk user-row writes to Bigtable as raw ``MutateRowsRequest`` protobufs, with per-entry retry.

``Table.mutate_rows`` takes one ``DirectRow`` per user and compiles each into a proto-plus
``MutateRowsRequest.Entry``; profiled on a million-user write that compilation and its
marshalling cost more CPU than the RPC itself (13k users/s against the emulator, bound by this
process's CPU). Here the entries are built once as raw protobufs, cell values cut from one
``bytes`` per column, and sent in one request per chunk through the table's data client
(``MutateRows``, the same RPC and routing header). What ``Table.mutate_rows`` retries, this
retries too: entries whose status is transient (``DEADLINE_EXCEEDED``, ``ABORTED``,
``UNAVAILABLE``) and RPCs that fail with a transient error are resent, with exponential
backoff, until the write deadline; any other status, or a transient one left at the deadline,
raises :class:`~embeddings.bigtable_layout.BigtableWriteError` naming the rows.
"""
from __future__ import annotations

import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from google.api_core import exceptions as gexc
from google.cloud.bigtable_v2.types import bigtable as bt_types
from google.cloud.bigtable_v2.types import data as data_v2

from embeddings.bigtable_layout import (
    _OK,
    EMB_FAMILY,
    META_FAMILY,
    BigtableWriteError,
    WriteAttempt,
    _qualifier,
    row_keys,
)
from embeddings.record import EmbeddingBatch

# google.rpc codes a Bigtable client retries per entry (as google.cloud.bigtable.table does)
RETRYABLE_CODES = frozenset({4, 10, 14})  # DEADLINE_EXCEEDED, ABORTED, UNAVAILABLE
RETRYABLE_RPC_ERRORS = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.Aborted)
NO_STATUS = -1  # an entry the server answered nothing for

_ENTRY = bt_types.MutateRowsRequest.Entry.pb()
_REQUEST = bt_types.MutateRowsRequest.pb()
_MUTATION = data_v2.Mutation.pb()
_SET_CELL = data_v2.Mutation.SetCell.pb()

Status = Tuple[int, str]
Send = Callable[[List[Any], float], List[Status]]


def user_entries(attempt: WriteAttempt, batch: EmbeddingBatch, lo: int = 0,
                 hi: Optional[int] = None) -> List[Any]:
    """One raw ``MutateRowsRequest.Entry`` per user of rows ``[lo, hi)``: the ``e`` cell
    (float32 little-endian embedding) and the ``m`` cell (int64 support size, last interaction,
    generated_at), both under the version's qualifier at the attempt's timestamp.

    The same cells as ``DirectRow.set_cell`` (tests compare the bytes); a range of a batch is
    read in place.
    """
    hi = batch.num_users if hi is None else hi
    q = _qualifier(attempt.model_version)
    ts_us = int(attempt.attempt_ts_us)
    emb = np.ascontiguousarray(batch.embeddings[lo:hi], dtype="<f4")
    e_size = emb.shape[1] * 4
    e_bytes = emb.tobytes()
    meta = np.ascontiguousarray(np.stack(
        [batch.support_size[lo:hi], batch.last_interaction_ts[lo:hi],
         np.full(hi - lo, batch.generated_at, dtype=np.int64)], axis=1), dtype="<i8")
    m_bytes = meta.tobytes()
    return [_ENTRY(row_key=key, mutations=[
        _MUTATION(set_cell=_SET_CELL(family_name=EMB_FAMILY, column_qualifier=q, timestamp_micros=ts_us,
                                     value=e_bytes[i * e_size:(i + 1) * e_size])),
        _MUTATION(set_cell=_SET_CELL(family_name=META_FAMILY, column_qualifier=q, timestamp_micros=ts_us,
                                     value=m_bytes[i * 24:(i + 1) * 24]))])
        for i, key in enumerate(row_keys(batch.user_ids[lo:hi]))]  # per row by API design


def send_entries(data_client: Any, table_name: str, app_profile_id: Optional[str],
                 entries: Sequence[Any], timeout_s: float) -> List[Status]:
    """One ``MutateRows`` RPC of ``entries``; ``(code, message)`` per entry, in their order
    (``NO_STATUS`` for an entry the server did not answer)."""
    raw = _REQUEST(table_name=table_name, entries=list(entries), app_profile_id=app_profile_id or "")
    out: List[Optional[Status]] = [None] * len(entries)
    for response in data_client.mutate_rows(request=bt_types.MutateRowsRequest.wrap(raw),
                                            retry=None, timeout=timeout_s):
        for e in bt_types.MutateRowsResponse.pb(response).entries:
            out[e.index] = (e.status.code, e.status.message)
    return [(NO_STATUS, "no status returned") if s is None else s for s in out]


def mutate_entries(send: Send, entries: Sequence[Any], deadline_s: float, table_name: str,
                   sleep: Callable[[float], None] = time.sleep, first_backoff_s: float = 0.05,
                   max_backoff_s: float = 5.0) -> None:
    """Sends ``entries`` with ``send(entries, timeout_s)`` and resends the transient failures
    (entries and RPCs) with exponential backoff until ``deadline_s`` seconds have passed.

    Raises:
        BigtableWriteError: some entries ended with a non-OK status (named, first ten shown).
        google.api_core.exceptions.GoogleAPICallError: an RPC failed with a non-transient
            error, or with a transient one at the deadline (transient: unavailable, deadline
            exceeded, aborted, an internal error from a reset stream).
    """
    if not entries:
        return
    end = time.monotonic() + deadline_s
    final: List[Optional[Status]] = [None] * len(entries)
    todo = list(range(len(entries)))
    backoff = first_backoff_s
    while todo:
        try:
            got = send([entries[i] for i in todo], max(0.001, end - time.monotonic()))
        except (*RETRYABLE_RPC_ERRORS, gexc.InternalServerError) as exc:
            if not _transient(exc) or time.monotonic() + backoff >= end:
                raise
            sleep(backoff)
            backoff = min(2 * backoff, max_backoff_s)
            continue
        retry = []
        for i, status in zip(todo, got):
            final[i] = status
            if status[0] in RETRYABLE_CODES:
                retry.append(i)
        if not retry or time.monotonic() + backoff >= end:
            break
        todo = retry
        sleep(backoff)
        backoff = min(2 * backoff, max_backoff_s)
    failed = [(entries[i].row_key, s[0], s[1]) for i, s in enumerate(final) if s is not None and s[0] != _OK]
    if failed:
        raise write_error(failed, len(entries), table_name)


def _transient(exc: Exception) -> bool:
    """A transient RPC failure: the retryable kinds, and an internal error from a reset stream
    (as google.cloud.bigtable.table treats them)."""
    if isinstance(exc, gexc.InternalServerError):
        return "rst_stream" in str(exc).lower() or "rst stream" in str(exc).lower()
    return isinstance(exc, RETRYABLE_RPC_ERRORS)


def write_error(failed: Sequence[Tuple[bytes, int, str]], total: int, table_name: str
                ) -> BigtableWriteError:
    """The error for ``failed`` ``(row_key, code, message)`` of ``total`` row mutations."""
    shown = "; ".join(f"{k.decode('utf-8', 'replace')}: code {c} {m}" for k, c, m in failed[:10])
    return BigtableWriteError(
        f"{len(failed)} of {total} row mutations failed in {table_name} "
        f"({shown}{' ...' if len(failed) > 10 else ''}); the version was not committed, "
        "rerun the write", failed)
