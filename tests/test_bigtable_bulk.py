"""Resends of embeddings/bigtable_bulk.mutate_entries, with a scripted send (no server)."""
from __future__ import annotations

import time

import numpy as np
import pytest
from google.api_core import exceptions as gexc

from embeddings.bigtable_bulk import mutate_entries, user_entries
from embeddings.bigtable_layout import BigtableWriteError, WriteAttempt, row_key
from embeddings.record import EmbeddingBatch


def _entries(n=4):
    ids = np.array([f"u{i}" for i in range(n)], dtype=object)
    batch = EmbeddingBatch.create(ids, np.zeros((n, 2), np.float32), "v1", 1,
                                  support_size=np.ones(n, np.int64),
                                  last_interaction_ts=np.ones(n, np.int64))
    return user_entries(WriteAttempt("v1", 1_000_000, None), batch)


class _Script:
    """send() that plays ``steps`` in order: an exception to raise or a status per entry
    (``None``: every entry OK); records the row keys of each call."""

    def __init__(self, *steps):
        self.steps, self.calls = list(steps), []

    def __call__(self, entries, timeout_s):
        assert timeout_s > 0
        self.calls.append([e.row_key for e in entries])
        step = self.steps.pop(0) if self.steps else None
        if isinstance(step, Exception):
            raise step
        return [(0, "")] * len(entries) if step is None else list(step)


def test_transient_rpc_errors_are_resent_whole_and_then_succeed():
    entries = _entries()
    send = _Script(gexc.ServiceUnavailable("down"), gexc.InternalServerError("Received RST_STREAM"),
                   None)
    mutate_entries(send, entries, deadline_s=5, table_name="t", sleep=lambda s: None)
    keys = [row_key(f"u{i}") for i in range(4)]
    assert send.calls == [keys, keys, keys]


def test_other_rpc_errors_are_raised_at_once():
    for exc in (gexc.PermissionDenied("no"), gexc.InternalServerError("bad plan")):
        send = _Script(exc, None)
        with pytest.raises(type(exc)):
            mutate_entries(send, _entries(), deadline_s=5, table_name="t", sleep=lambda s: None)
        assert len(send.calls) == 1


def test_a_transient_rpc_error_that_persists_is_raised_at_the_deadline():
    send = _Script(*[gexc.ServiceUnavailable("down")] * 1000)
    t0 = time.monotonic()
    with pytest.raises(gexc.ServiceUnavailable):
        mutate_entries(send, _entries(), deadline_s=0.3, table_name="t", first_backoff_s=0.02)
    assert time.monotonic() - t0 < 2 and 2 <= len(send.calls) < 20


def test_only_transient_entries_are_resent_and_failures_are_named():
    entries = _entries()
    # entry 1 UNAVAILABLE then OK; entry 2 ABORTED then INVALID_ARGUMENT (final, named)
    send = _Script([(0, ""), (14, "busy"), (10, "abort"), (0, "")], [(0, ""), (3, "bad cell")])
    with pytest.raises(BigtableWriteError) as err:
        mutate_entries(send, entries, deadline_s=5, table_name="tbl", sleep=lambda s: None)
    assert send.calls[1] == [row_key("u1"), row_key("u2")]
    assert err.value.failed == [(row_key("u2"), 3, "bad cell")]
    assert "1 of 4 row mutations failed in tbl" in str(err.value)
