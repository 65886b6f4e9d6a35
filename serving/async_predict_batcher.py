"""Cross-request batching on the ranker service's event loop: ``predict_raw`` over ``grpc.aio``.

The thread batcher (:mod:`serving.predict_batcher`) keeps a worker thread blocked per request
until its Predict is answered, so the requests one Predict can carry are bounded by the worker
threads, and every answer wakes each caller's thread. Here the Predict is a coroutine on the
HTTP server's own event loop: a worker thread only prepares a request (body, validation,
embedding lookup, columns: :meth:`serving.ranker.Ranker.prepare`) and is free again; the loop
queues the prepared :class:`~serving.ranker_types.PredictJob` and awaits its slice of the
probabilities.

Batching: when no Predict is in flight, a job starts one at once, from its caller's own coroutine
(a lone request waits for nothing); jobs that arrive while a Predict is in flight queue, and the
next Predict (sent by a drain task) carries all of them (up to ``max_rows`` rows, one Predict
per model version and input set, rows in arrival order). A job arrives with its rows already
in wire form (``PredictJob.rows``), so the next request is joined from them
(:mod:`serving.predict_wire`) the moment the previous Predict returns, and sent as bytes. A
failed Predict fails every job it carried with the same exception. Everything here runs on one
event loop; it is not thread-safe.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

from serving import predict_request as PR
from serving.predict_wire import batch_request_bytes
from serving.ranker_types import PredictJob

_AsyncPredict = Callable[..., Awaitable[Any]]


class AsyncPredictBatcher:
    """Batches prepared ``predict_raw`` jobs of concurrent requests into shared Predicts.

    Args:
        predict: ``await predict(request_bytes, timeout=..., metadata=...)``: a ``grpc.aio``
            ``unary_unary`` call of ``PredictionService/Predict`` that sends the serialized
            request as it is (``request_serializer=None``) and returns a ``PredictResponse``.
        model_name: the served model.
        timeout_s: deadline of one Predict.
        metadata: gRPC metadata of every call (e.g. the bearer token), or None.
        max_rows: most candidate rows in one Predict (a job is never split).
        close: coroutine function closing the channel behind ``predict`` (:meth:`aclose`).
        ready: coroutine function that returns once the channel behind ``predict`` is
            connected (``grpc.aio.Channel.channel_ready``; :meth:`connect`).

    Raises:
        ValueError: for a non-positive ``timeout_s`` or ``max_rows``.
    """

    def __init__(self, predict: _AsyncPredict, model_name: str, timeout_s: float,
                 metadata: Optional[Sequence[Tuple[str, str]]] = None, max_rows: int = 8192,
                 close: Optional[Callable[[], Awaitable[None]]] = None,
                 ready: Optional[Callable[[], Awaitable[None]]] = None) -> None:
        if timeout_s <= 0 or max_rows < 1:
            raise ValueError(f"timeout_s={timeout_s}, max_rows={max_rows}: both must be > 0")
        self._predict, self.model_name = predict, model_name
        self.timeout_s, self._metadata, self.max_rows = float(timeout_s), metadata, int(max_rows)
        self._close, self._ready = close, ready
        self.connected = False  # set by connect()
        self._pending: List[Tuple[PredictJob, asyncio.Future]] = []
        self._sending = False
        self._drainer: Optional[asyncio.Task] = None
        self.calls = 0      # Predicts sent
        self.requests = 0   # jobs answered

    async def predict(self, job: PredictJob) -> Tuple[List[float], int]:
        """Scores one prepared job; returns when the Predict that carried it is answered.

        Returns:
            ``(probabilities [n], version that answered)``; the job's ``queue_s`` and
            ``predict_s`` are set (the ranker's ``Server-Timing``).

        Raises:
            grpc.RpcError: the Predict failed (``grpc.aio.AioRpcError``).
            ValueError: the model server answered badly (wrong size or type).
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        job.queued_at = time.perf_counter()
        if not self._sending and not self._pending:
            # Nothing in flight or queued: the caller sends its own Predict (no drain task to
            # start and switch to); jobs queued meanwhile get the drain task once it returns.
            self._sending = True
            try:
                await self._send([(job, future)])
            finally:
                if self._pending:
                    self._drainer = loop.create_task(self._drain())  # still sending
                else:
                    self._sending = False
            return future.result()
        self._pending.append((job, future))
        if not self._sending:
            self._sending = True
            # its own task (kept referenced): a caller only ever waits for its own answer
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Sends what is queued, then what queued meanwhile, until nothing is left."""
        try:
            while self._pending:
                batch = self._take()
                groups: Dict[Tuple, List[Tuple[PredictJob, asyncio.Future]]] = {}
                for entry in batch:
                    groups.setdefault(entry[0].key(), []).append(entry)
                for entries in groups.values():
                    await self._send(entries)
        except BaseException as exc:  # never strand queued jobs on a dead sender
            stranded, self._pending = self._pending, []
            for _, future in stranded:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception)
                                         else RuntimeError(f"batcher stopped: {exc!r}"))
            raise
        finally:
            self._sending = False

    def _take(self) -> List[Tuple[PredictJob, asyncio.Future]]:
        """Queued jobs up to ``max_rows`` rows (at least one)."""
        batch, rows = [], 0
        while self._pending and (not batch or rows + self._pending[0][0].n <= self.max_rows):
            entry = self._pending.pop(0)
            batch.append(entry)
            rows += entry[0].n
        return batch

    async def _send(self, entries: List[Tuple[PredictJob, asyncio.Future]]) -> None:
        jobs = [job for job, _ in entries]
        try:
            total = sum(job.n for job in jobs)
            first = jobs[0]
            req = batch_request_bytes(self.model_name, first.version, first.inputs,
                                      [job.rows for job in jobs])
            sent = time.perf_counter()
            resp = await self._predict(req, timeout=self.timeout_s, metadata=self._metadata)
            rtt = time.perf_counter() - sent
            self.calls += 1
            scores = PR.probabilities(resp, total)
            answered = int(resp.model_spec.version.value or jobs[0].version)
        except Exception as exc:  # noqa: BLE001 - every job of the Predict gets the failure
            for _, future in entries:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for job, future in entries:
            job.queue_s = max(sent - job.queued_at, 0.0) if job.queued_at is not None else None
            job.predict_s = rtt
            if not future.done():  # its caller may have been cancelled (client went away)
                future.set_result((scores[start:start + job.n], answered))
            start += job.n
        self.requests += len(entries)

    async def connect(self, timeout_s: float) -> bool:
        """Connects the channel ahead of the first Predict (a new channel connects lazily, and
        the first request would pay it: ~25-30 ms here). Never raises.

        Returns:
            Whether the channel is connected; False also when there is no ``ready`` to call or
            the model server did not answer within ``timeout_s`` (requests then connect as
            usual, and fail as usual while it is down).
        """
        if self._ready is None:
            return False
        try:
            await asyncio.wait_for(self._ready(), timeout_s)
        except Exception:  # noqa: BLE001 - a server that is down now may be up for the requests
            return False
        self.connected = True
        return True

    async def aclose(self) -> None:
        """Closes the channel (when one was given)."""
        if self._close is not None:
            await self._close()


__all__ = ["AsyncPredictBatcher"]
