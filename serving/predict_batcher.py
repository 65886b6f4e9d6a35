"""Cross-request batching of ``predict_raw`` calls: concurrent rank requests share one Predict.

Each rank request costs the model server a gRPC round trip and one SavedModel call whatever its
size, and on a small machine those fixed costs dominate (ML-100K main job, 100 candidates: the
model itself 0.7 ms, the Predict round trip 2.2 ms).

:class:`PredictBatcher` batches by leadership, with no extra thread: a caller that finds no
Predict in flight becomes the *leader*; it waits ``window_s`` (0 by default), takes every
pending request, and sends them as Predicts, one per model version and input set (rows
concatenated in arrival order). It then sends what arrived meanwhile until its own request is
answered, and hands leadership to the oldest request still queued (so no caller keeps sending
for others under sustained load). Callers that arrive while a leader is active only queue their
columns and wait for their slice of the probabilities. A lone request is sent by its own thread
at once (no hand-off), and under load the requests that queue during one Predict share the next. A failed Predict fails
every request it carried, with the same exception.

Opt-in (``Ranker(batch_requests=True)``, ``limaml serve --batch-requests``); off by default.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from tensorflow.core.framework import types_pb2

from serving import predict_request as PR


class _Item:
    __slots__ = ("version", "inputs", "columns", "emb", "n", "wake", "lead", "result", "error")

    def __init__(self, version: int, inputs: Mapping[str, int], columns: Mapping[str, Any],
                 emb: np.ndarray, n: int):
        self.version, self.inputs, self.columns, self.emb, self.n = version, inputs, columns, emb, n
        self.wake = threading.Event()  # set when answered, or when promoted to leader
        self.lead = False
        self.result: Optional[Tuple[List[float], int]] = None
        self.error: Optional[BaseException] = None

    def key(self) -> Tuple:
        return (self.version, tuple(sorted(self.inputs.items())), self.emb.shape[-1])

    def done(self) -> bool:
        return self.result is not None or self.error is not None


class PredictBatcher:
    """Batches ``predict_raw`` requests of concurrent callers into one Predict per model version.

    Args:
        predict: ``predict(request, timeout=..., metadata=...)`` (the gRPC stub's ``Predict``).
        model_name: the served model.
        timeout_s: deadline of one batched Predict.
        metadata: gRPC metadata of every call (e.g. the bearer token), or None.
        window_s: how long a leader waits for more requests before its first Predict.
        max_rows: most candidate rows in one Predict (a request is never split).
        wait_margin_s: a caller gives up ``timeout_s + window_s + wait_margin_s`` after it
            queued (its request leaves the queue; were it about to lead, the next one does).
    """

    def __init__(self, predict: Callable[..., Any], model_name: str, timeout_s: float,
                 metadata: Optional[Sequence[Tuple[str, str]]] = None, window_s: float = 0.0,
                 max_rows: int = 8192, wait_margin_s: float = 5.0):
        if window_s < 0:
            raise ValueError(f"window_s={window_s}; must be >= 0 seconds")
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows}; must be >= 1")
        self._predict, self.model_name = predict, model_name
        self.timeout_s, self._metadata = float(timeout_s), metadata
        self.window_s, self.max_rows = float(window_s), int(max_rows)
        self.max_wait_s = self.timeout_s + self.window_s + float(wait_margin_s)
        self._lock = threading.Lock()
        self._pending: List[_Item] = []
        self._sending = False   # a leader is active
        self.calls = 0          # Predict calls sent
        self.requests = 0       # requests answered

    def predict(self, version: int, inputs: Mapping[str, int], columns: Mapping[str, Any],
                emb: np.ndarray, n: int) -> Tuple[List[float], int]:
        """Scores one request's ``n`` candidates; returns when its batch is answered.

        Args:
            version: the pinned model version.
            inputs: the ``predict_raw`` inputs (name -> dtype), without the embedding.
            columns: input name -> ``[n]`` values (UTF-8 bytes for strings, arrays for numbers).
            emb: the user's ``[E]`` embedding or ``[n, W]`` rows.
            n: candidates.

        Returns:
            ``(probabilities [n], version that answered)``.

        Raises:
            grpc.RpcError, ValueError: the batched Predict failed or answered badly.
            TimeoutError: no answer within the Predict deadline plus 5 s.
        """
        item = _Item(version, inputs, columns, np.asarray(emb, np.float32), n)
        with self._lock:
            self._pending.append(item)
            item.lead = not self._sending
            self._sending = True
        deadline = time.monotonic() + self.max_wait_s
        while not item.done():
            if item.lead:
                item.lead = False
                self._lead(item)
                continue
            if not item.wake.wait(max(0.0, deadline - time.monotonic())):
                self._abandon(item)
                raise TimeoutError(f"no Predict answered this request within {self.max_wait_s:.1f} s")
            item.wake.clear()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    # ----------------------------------------------------------------- leader

    def _take(self) -> List[_Item]:
        """Pending requests up to ``max_rows`` rows (at least one, when any)."""
        with self._lock:
            batch, rows = [], 0
            while self._pending and (not batch or rows + self._pending[0].n <= self.max_rows):
                item = self._pending.pop(0)
                batch.append(item)
                rows += item.n
            return batch

    def _lead(self, own: _Item) -> None:
        """Sends pending requests until ``own`` is answered, then hands leadership to the
        oldest pending request (or ends it), so no caller waits on others' traffic."""
        try:
            if self.window_s > 0:
                time.sleep(self.window_s)
            while not own.done():
                batch = self._take()
                if not batch:
                    break
                groups: Dict[Tuple, List[_Item]] = {}
                for item in batch:
                    groups.setdefault(item.key(), []).append(item)
                for items in groups.values():
                    self._send(items)
        except BaseException as exc:  # never leave queued requests on a dead leader
            with self._lock:
                stranded, self._pending = self._pending, []
            for item in stranded + ([] if own.done() else [own]):
                item.error = exc
                item.wake.set()
        finally:
            with self._lock:
                self._hand_on()

    def _hand_on(self) -> None:
        """Makes the oldest queued request the leader, or ends leadership (holding the lock)."""
        if self._pending:
            nxt = self._pending[0]
            nxt.lead = True
            nxt.wake.set()
        else:
            self._sending = False

    def _abandon(self, item: _Item) -> None:
        """A caller that gave up: its request leaves the queue, and leadership handed to it
        meanwhile goes on to the next request (else no thread would ever send again)."""
        with self._lock:
            if item in self._pending:
                self._pending.remove(item)
            if item.lead:
                item.lead = False
                self._hand_on()

    def _send(self, items: List[_Item]) -> None:
        first = items[0]
        try:
            if len(items) == 1:  # alone: its own columns, no copies
                columns, emb, total = first.columns, first.emb, first.n
            else:
                columns = {}
                for name, dtype in first.inputs.items():
                    parts = [item.columns[name] for item in items]
                    columns[name] = ([v for part in parts for v in part] if dtype == types_pb2.DT_STRING
                                     else np.concatenate([np.asarray(part) for part in parts]))
                total = sum(item.n for item in items)
                emb = np.concatenate([np.broadcast_to(item.emb, (item.n, item.emb.shape[-1]))
                                      for item in items], axis=0)
            req = PR.raw_request(self.model_name, first.version, first.inputs, columns, emb, total)
            resp = self._predict(req, timeout=self.timeout_s, metadata=self._metadata)
            self.calls += 1
            scores = PR.probabilities(resp, total)
            answered = int(resp.model_spec.version.value or first.version)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the failure
            for item in items:
                item.error = exc
                item.wake.set()
            return
        start = 0
        for item in items:
            item.result = (scores[start:start + item.n], answered)
            start += item.n
            item.wake.set()
        self.requests += len(items)
