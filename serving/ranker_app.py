"""The ranker service's ASGI application: routing, authentication, bodies and backpressure.

:class:`RankerApp` routes ``POST /v1/rank``, ``GET /healthz``, ``GET /readyz`` and ``GET
/metrics`` (Prometheus, :mod:`serving.ranker_metrics`); checks the optional bearer token of
``/v1/rank`` (the probes and the metrics stay open); reads a body of at most
``max_body_bytes`` within ``body_timeout_s`` (Content-Length required); and runs the blocking
ranker on ``workers`` threads, answering 503 at once when ``max_pending`` requests are already in
the ranker. With a batching ranker (``batch_requests``) the Predict runs on this event loop,
where the requests queued during one Predict share the next
(:mod:`serving.async_predict_batcher`), and a request is prepared (parsed, validated, embedding
looked up, columns built) on the loop itself when its body is at most :data:`INLINE_BODY_BYTES`
and all it needs is in memory, else on a worker thread, which is free again once it is prepared.
Each ranking answer carries a ``Server-Timing`` header (:mod:`serving.server_timing`). The
answers themselves come from :mod:`serving.rank_handlers`; the API is described in
:mod:`serving.ranker_service`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

import orjson

from serving.rank_handlers import (
    WOULD_BLOCK,
    _error,
    finish_rank_job,
    handle_rank_body,
    handle_ready,
    prepare_rank_body,
)
from serving.ranker import Ranker
from serving.ranker_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.ranker_metrics import RankerMetrics
from serving.ranker_types import PredictJob
from serving.server_timing import HEADER as SERVER_TIMING
from serving.server_timing import RankTiming

log = logging.getLogger(__name__)
RANK_PATH = "/v1/rank"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_BODY_TIMEOUT_S = 10.0
DEFAULT_WORKERS = 8
DEFAULT_MAX_PENDING = 1024
DEFAULT_CONNECT_TIMEOUT_S = 3.0
INLINE_BODY_BYTES = 64 << 10
"""Largest body a batching app prepares on its event loop (when all it needs is in memory)."""


_BODY_TIMED_OUT = object()
_Headers = List[Tuple[bytes, Union[bytes, RankTiming]]]  # a RankTiming: Server-Timing, finished
_Send = Callable[[Dict[str, Any]], Awaitable[None]]
_Receive = Callable[[], Awaitable[Dict[str, Any]]]


class RankerApp:
    """The ranker's ASGI application (see the module doc for the API).

    Args:
        ranker: the ranker.
        max_body_bytes: largest request body.
        body_timeout_s: most seconds to receive a body once its head arrived.
        workers: threads running the ranker (gRPC and embedding calls block).
        max_pending: most requests in the ranker (running or queued); more get 503 at once.
        auth_token: required ``Authorization: Bearer`` token of ``/v1/rank``; None: open.
        connect_timeout_s: how long the lifespan startup waits for the model server's channel.
    """

    def __init__(self, ranker: Ranker, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S, workers: int = DEFAULT_WORKERS,
                 max_pending: int = DEFAULT_MAX_PENDING, auth_token: Optional[str] = None,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        if (workers < 1 or max_pending < 1 or max_body_bytes < 1 or body_timeout_s <= 0
                or connect_timeout_s <= 0):
            raise ValueError(f"workers={workers}, max_pending={max_pending}, "
                             f"max_body_bytes={max_body_bytes}, body_timeout_s={body_timeout_s}, "
                             f"connect_timeout_s={connect_timeout_s}: all must be positive")
        self.ranker = ranker
        self.max_body_bytes = int(max_body_bytes)
        self.body_timeout_s = float(body_timeout_s)
        self.max_pending = int(max_pending)
        self.connect_timeout_s = float(connect_timeout_s)
        self._expected = f"Bearer {auth_token}".encode("utf-8") if auth_token else None
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ranker")
        self._pending = 0  # touched only on the event loop
        self._batcher: Any = None  # the loop's AsyncPredictBatcher, made on first use
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.metrics = RankerMetrics(ranker, RANK_PATH, (HEALTH_PATH, READY_PATH, METRICS_PATH),
                                     lambda: self._pending)

    def close(self) -> None:
        """Stops the worker threads (after running requests); closes the batcher's channel
        while its event loop still runs (once the loop has stopped, the channel goes with it)."""
        self._pool.shutdown(wait=False)
        batcher, loop, self._batcher = self._batcher, self._loop, None
        if batcher is not None and loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(batcher.aclose(), loop).result(timeout=2.0)
            except Exception:  # noqa: BLE001 - closing on the way out
                pass

    async def __call__(self, scope: Dict[str, Any], receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == METRICS_PATH and method in ("GET", "HEAD"):
            data = self.metrics.render()
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", METRICS_CONTENT_TYPE),
                (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            self.metrics.observe(path, 200, {})
            return
        headers = dict(scope["headers"])
        status, body, extra = await self._route(path, method, headers, receive)
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        out_headers: List[Tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        timing = None
        for name, value in extra:
            if isinstance(value, RankTiming):
                timing, value = value, value.finish()
            out_headers.append((name, value))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": data})
        self.metrics.observe(path, status, body, timing)  # after the answer: off its latency

    async def _lifespan(self, receive: _Receive, send: _Send) -> None:
        """ASGI lifespan: at startup a batching app makes its batcher, connects its channel and
        sends one warm-up Predict through it (so the first request pays neither the connection
        nor the loop's first gRPC call); startup never fails on either."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.ranker.batches_requests and self._batcher is None:
                    batcher = self._loop_batcher()
                    if await batcher.connect(self.connect_timeout_s):
                        await self._warm_up_loop(batcher)
                    else:
                        log.warning("ranker service: model server at %s not reachable within "
                                    "%.1f s at start; requests will connect when it is",
                                    self.ranker.target, self.connect_timeout_s)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _warm_up_loop(self, batcher: Any) -> None:
        """One small Predict through the loop's batcher (:meth:`Ranker.warm_up_job`): the
        loop's first gRPC call costs 5-25 ms more than the next ones. Never raises."""
        try:  # each step bounded: a slow store or model server delays the start by seconds
            job = await asyncio.wait_for(self._blocking(self.ranker.warm_up_job),
                                         self.connect_timeout_s)
            if job is not None:
                await asyncio.wait_for(batcher.predict(job), self.connect_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a cold first call is slow, not wrong
            log.warning("ranker service: warm-up Predict on the event loop failed: %s", exc)

    async def _route(self, path: str, method: str, headers: Dict[bytes, bytes],
                     receive: _Receive) -> Tuple[int, Dict[str, Any], _Headers]:
        close = [(b"connection", b"close")]
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            return 200, {"status": "ok"}, []
        if path == READY_PATH and method in ("GET", "HEAD"):
            status, body = await self._run(handle_ready, self.ranker)
            return status, body, []
        if path == RANK_PATH and method != "POST":
            return (*_error(405, "method_not_allowed", f"use POST for {RANK_PATH}"), [])
        if path != RANK_PATH:
            if path in (HEALTH_PATH, READY_PATH, METRICS_PATH):
                return (*_error(405, "method_not_allowed", f"use GET for {path}"), [])
            return (*_error(404, "not_found", f"unknown path; use POST {RANK_PATH}, "
                                              f"GET {HEALTH_PATH}, GET {READY_PATH} or "
                                              f"GET {METRICS_PATH}"), [])
        if self._expected is not None and not hmac.compare_digest(
                headers.get(b"authorization", b""), self._expected):
            return (*_error(401, "unauthorized", "missing or wrong bearer token"),
                    [(b"www-authenticate", b"Bearer")])
        length_header = headers.get(b"content-length")
        if length_header is None:
            return (*_error(411, "length_required", "Content-Length header required"), close)
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            return (*_error(400, "bad_request", "bad Content-Length", "Content-Length"), close)
        if length > self.max_body_bytes:
            return (*_error(413, "too_large", f"body of {length} bytes is larger than "
                                              f"{self.max_body_bytes}; send fewer candidates"),
                    close)
        body = await self._read_body_within(receive, length)
        if body is _BODY_TIMED_OUT:
            return (*_error(408, "body_timeout",
                            f"body not received within {self.body_timeout_s:g} s"), close)
        if body is None:
            return (*_error(400, "bad_request", "body shorter than Content-Length", "body"), close)
        if self._pending >= self.max_pending:
            return (*_error(503, "overloaded", "too many requests waiting; retry"),
                    [(b"retry-after", b"1")])
        timing = RankTiming(started_at=time.perf_counter())  # total: until the answer is encoded
        status, obj = await self._rank(body, timing)
        return status, obj, [(SERVER_TIMING, timing)]

    async def _rank(self, body: bytes, timing: RankTiming) -> Tuple[int, Dict[str, Any]]:
        """The answer to a ranking body; fills ``timing`` (``Server-Timing``) as it goes."""
        if not self.ranker.batches_requests:  # one Predict per request, on the worker
            return await self._run(handle_rank_body, self.ranker, body)
        start = time.perf_counter()
        batcher = self._loop_batcher()
        self._pending += 1
        try:
            # On the loop when the body is small and all it needs is in memory (no thread
            # hand-off, no GIL contention); else, or when a store or server call is due, on a
            # worker thread.
            step = (prepare_rank_body(self.ranker, body, in_memory_only=True)
                    if len(body) <= INLINE_BODY_BYTES else WOULD_BLOCK)
            if step is WOULD_BLOCK:
                step = await self._blocking(prepare_rank_body, self.ranker, body)
            if not isinstance(step, PredictJob):
                return step
            timing.prepare_s = time.perf_counter() - start
            answer = await finish_rank_job(self.ranker, body, step, batcher, self._blocking)
            timing.queue_s, timing.predict_s = step.queue_s, step.predict_s
            return answer
        finally:
            self._pending -= 1

    def _loop_batcher(self) -> Any:
        """This event loop's batcher (and channel), made on first use: at startup, or by the
        first request when the server runs without lifespan events."""
        if self._batcher is None:
            self._loop = asyncio.get_running_loop()
            self._batcher = self.ranker.async_batcher()
        return self._batcher

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._pending -= 1

    async def _read_body_within(self, receive: _Receive, length: int) -> Any:
        """:meth:`_read_body`, or :data:`_BODY_TIMED_OUT` after ``body_timeout_s``.

        The deadline cancels this task from a timer (``asyncio.wait_for`` would run the read as
        a task of its own, ~20 µs a request; Python 3.10 has no ``asyncio.timeout``); a
        cancellation from elsewhere (the client went away) goes on as a cancellation.
        """
        task = asyncio.current_task()
        fired = []

        def expire() -> None:
            fired.append(True)
            task.cancel()

        timer = asyncio.get_running_loop().call_later(self.body_timeout_s, expire)
        try:
            return await self._read_body(receive, length)
        except asyncio.CancelledError:
            if fired:
                return _BODY_TIMED_OUT
            raise
        finally:
            timer.cancel()

    @staticmethod
    async def _read_body(receive: _Receive, length: int) -> Optional[bytes]:
        chunks: List[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > length:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks) if size == length else None
