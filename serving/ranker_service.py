"""HTTP JSON front end of the ranker: an ASGI app served by uvicorn (``serving.http_server``).

API
---

``POST /v1/rank`` with ``Content-Type: application/json`` and a body::

    {"user_id": "u42",
     "candidates": [{"item_id": "i1", "genres": "Drama|Comedy", "release_year": 1995}, ...],
     "user_features": {"age_bucket": "25", ...}}          # optional

or, with an item cache (``limaml serve`` loads one from the run's examples), ids only::

    {"user_id": "u42", "item_ids": ["i1", "i2"], "user_features": {...}}

Each candidate holds raw features named as in ``schema.features``; the required ones are the
ranker's ``required_features`` (default: item id and item features; only ``item_id`` when the
ranker has an item cache, which fills the rest). Types follow
``schema.features.CANONICAL_COLUMNS``: strings, integers (int64), numbers (float64).

Responses (always a JSON object, ``Content-Type: application/json``):

    200  {"scores": [0.71, ...],        # click probability per candidate, in request order
          "model_version": "2",         # served version; the embedding came from the same one
          "cold_start": false,          # true: no embedding for the user, cold-start default used
          "degraded": null}             # or a short reason (e.g. "embedding store unavailable")

    multi-block model (user × genre) only, also:
          "fallbacks": {"genre_to_user": 1, "user_to_cold": 0, "cold_genre_to_cold": 0}
                                        # candidates per fallback (serving.multi_block)
    4xx/5xx {"error": "<message>", "code": "<short code>", "field": ...}

    400  bad_request         malformed JSON (also: invalid Unicode, nesting too deep) or request;
                             ``field`` names the offending field
    401  unauthorized        a token is configured and the request lacks it
    404  not_found           unknown path
    405  method_not_allowed  wrong method for the path
    408  body_timeout        the body did not arrive within ``body_timeout_s``
    411  length_required     no Content-Length
    413  too_large           body larger than ``max_body_bytes``
    502  model_error         the model server rejected the request (contract mismatch)
    503  model_unavailable, embeddings_unavailable, embeddings_not_committed, overloaded
                             (more than ``max_pending`` requests waiting; ``Retry-After: 1``)
    500  internal            anything else; the service keeps serving

5xx messages are generic: the details (hosts, paths, table names) go to the log only.

``GET /healthz`` -> 200 ``{"status": "ok"}`` while the process serves HTTP (liveness).
``GET /readyz``  -> 200 ``{"status": "ready", "model_version": "2"}`` when the model server
serves a version *and* that version's meta embeddings are readable from the store, else 503.

Authentication (optional): with ``auth_token`` set (``--auth-token-file`` or
``LIMAML_RANKER_TOKEN``), ``POST /v1/rank`` needs ``Authorization: Bearer <token>``; the probes
(``/healthz``, ``/readyz``) stay open for the kubelet.

Server: uvicorn on a socket with a listen backlog of 2048, keep-alive, a request-head deadline,
bounded head size, at most ``max_pending`` requests in the ranker at once (queued for
``workers`` threads), the rest answered 503 at once (see :func:`start_ranker_service`).

Run: ``start_ranker_service(ranker, port=0)`` in process, or ``python -m serving.ranker_service
--model-target host:8500 --model-name global_block --embedding-lookup pkg.module:factory``
(binds 127.0.0.1 unless ``--host`` says otherwise).
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hmac
import importlib
import json
import logging
import sys
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

from embeddings.record import VersionNotCommittedError
from serving.http_server import AsgiServerHandle, serve_asgi
from serving.model_server import guard
from serving.ranker import (
    EmbeddingLookupError,
    InvalidRequest,
    ModelServerError,
    ModelServerUnavailable,
    Ranker,
)
from serving.signals import wait_for_stop_signal

log = logging.getLogger(__name__)

RANK_PATH = "/v1/rank"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_BODY_TIMEOUT_S = 10.0
DEFAULT_WORKERS = 8
DEFAULT_MAX_PENDING = 1024
TOKEN_ENV = "LIMAML_RANKER_TOKEN"
_REQUEST_KEYS = ("user_id", "candidates", "item_ids", "user_features")


class _HttpError(Exception):
    def __init__(self, status: int, message: str, field: Optional[str] = None,
                 code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code


def _error(status: int, code: str, message: str, field: Optional[str] = None
           ) -> Tuple[int, Dict[str, Any]]:
    body: Dict[str, Any] = {"error": message, "code": code}
    if field is not None or status == 400:
        body["field"] = field
    return status, body


def _embedding_failure(exc: EmbeddingLookupError) -> Tuple[int, Dict[str, Any]]:
    cause = exc.__cause__
    version = getattr(exc, "model_version", None)
    if isinstance(cause, VersionNotCommittedError):
        return _error(503, "embeddings_not_committed",
                      f"model version {version!r} is not committed in the meta embeddings; run "
                      "meta-embedding generation for it or serve a version that has embeddings")
    return _error(503, "embeddings_unavailable",
                  f"the meta embeddings of model version {version!r} cannot be read now")


def _public_degraded(degraded: Optional[str]) -> Optional[str]:
    """A response's ``degraded`` without store names (the full reason is logged)."""
    if degraded is None:
        return None
    log.info("degraded answer: %s", degraded)
    if "timed out" in degraded or "saturated" in degraded:
        return "embedding store too slow; cold-start default served"
    if "cold-start" in degraded and "fallback" in degraded:
        return "cold-start default unknown; fallback vector served"
    return "embedding store unavailable; cold-start default served"


def parse_rank_body(body: bytes) -> Dict[str, Any]:
    """Decodes a ``/v1/rank`` body into its JSON object.

    Raises:
        _HttpError: 400 for anything that is not a UTF-8 JSON object of the allowed keys
            (invalid Unicode, nesting deeper than Python's recursion limit included).
    """
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _HttpError(400, f"body is not valid UTF-8 JSON: {exc}", "body") from None
    except RecursionError:
        raise _HttpError(400, "body is nested too deeply", "body") from None
    if not isinstance(payload, dict):
        raise _HttpError(400, f"body must be a JSON object, got {type(payload).__name__}",
                         "body")
    extra = sorted(set(payload) - set(_REQUEST_KEYS))
    if extra:
        raise _HttpError(400, f"unknown request field(s) {extra}; allowed: "
                              f"{list(_REQUEST_KEYS)}", extra[0])
    if "user_id" not in payload:
        raise _HttpError(400, "user_id: missing", "user_id")
    has_c, has_i = "candidates" in payload, "item_ids" in payload
    if has_c == has_i:
        raise _HttpError(400, "candidates: missing (send candidates or item_ids, one of them)"
                         if not has_c else "send candidates or item_ids, not both", "candidates")
    return payload


def handle_rank_body(ranker: Ranker, body: bytes) -> Tuple[int, Dict[str, Any]]:
    """Answers one ``/v1/rank`` body: ``(HTTP status, JSON object)``; never raises."""
    try:
        payload = parse_rank_body(body)
        if "item_ids" in payload:
            resp = ranker.rank_items(payload["user_id"], payload["item_ids"],
                                     payload.get("user_features"))
        else:
            resp = ranker.rank(payload["user_id"], payload["candidates"],
                               payload.get("user_features"))
        out = resp.to_json()
        out["degraded"] = _public_degraded(out["degraded"])
        return 200, out
    except _HttpError as exc:
        return _error(exc.status, exc.code, exc.message, exc.field)
    except InvalidRequest as exc:
        return _error(400, "bad_request", _printable(str(exc)), exc.field)
    except EmbeddingLookupError as exc:
        log.warning("ranker service: %s", exc)
        return _embedding_failure(exc)
    except ModelServerUnavailable as exc:
        log.warning("ranker service: %s", exc)
        return _error(503, "model_unavailable", "the model server is unavailable")
    except ModelServerError as exc:
        log.error("ranker service: %s", exc)
        return _error(502, "model_error", "the model server rejected the request")
    except RecursionError:
        return _error(400, "bad_request", "request is nested too deeply", "body")
    except Exception:  # noqa: BLE001 - answer 500, keep serving
        log.exception("ranker service: unexpected error")
        return _error(500, "internal", "internal error")


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def handle_ready(ranker: Ranker) -> Tuple[int, Dict[str, Any]]:
    """``/readyz``: 200 when the served version and its embeddings are reachable, else 503."""
    try:
        version = ranker.readiness()
    except EmbeddingLookupError as exc:
        log.warning("readiness: %s", exc)
        status, body = _embedding_failure(exc)
        return status, {"status": "unavailable", **body}
    except ModelServerError as exc:
        log.warning("readiness: %s", exc)
        return 503, {"status": "unavailable", "code": "model_unavailable",
                     "error": "the model server is unavailable"}
    except Exception:  # noqa: BLE001
        log.exception("readiness check failed")
        return 503, {"status": "unavailable", "code": "internal", "error": "internal error"}
    return 200, {"status": "ready", "model_version": str(version)}


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
    """

    def __init__(self, ranker: Ranker, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S, workers: int = DEFAULT_WORKERS,
                 max_pending: int = DEFAULT_MAX_PENDING, auth_token: Optional[str] = None
                 ) -> None:
        if workers < 1 or max_pending < 1 or max_body_bytes < 1 or body_timeout_s <= 0:
            raise ValueError(f"workers={workers}, max_pending={max_pending}, "
                             f"max_body_bytes={max_body_bytes}, body_timeout_s={body_timeout_s}:"
                             " all must be positive")
        self.ranker = ranker
        self.max_body_bytes = int(max_body_bytes)
        self.body_timeout_s = float(body_timeout_s)
        self.max_pending = int(max_pending)
        self._expected = f"Bearer {auth_token}".encode("utf-8") if auth_token else None
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ranker")
        self._pending = 0  # touched only on the event loop

    def close(self) -> None:
        """Stops the worker threads (after running requests)."""
        self._pool.shutdown(wait=False)

    async def __call__(self, scope: Dict[str, Any], receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        headers = dict(scope["headers"])
        status, body, extra = await self._route(path, method, headers, receive)
        data = json.dumps(body).encode("utf-8")
        out_headers: List[Tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        out_headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": data})

    async def _route(self, path: str, method: str, headers: Dict[bytes, bytes],
                     receive: _Receive) -> Tuple[int, Dict[str, Any], List[Tuple[bytes, bytes]]]:
        close = [(b"connection", b"close")]
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            return 200, {"status": "ok"}, []
        if path == READY_PATH and method in ("GET", "HEAD"):
            status, body = await self._run(handle_ready, self.ranker)
            return status, body, []
        if path == RANK_PATH and method != "POST":
            return (*_error(405, "method_not_allowed", f"use POST for {RANK_PATH}"), [])
        if path != RANK_PATH:
            if path in (HEALTH_PATH, READY_PATH):
                return (*_error(405, "method_not_allowed", f"use GET for {path}"), [])
            return (*_error(404, "not_found", f"unknown path; use POST {RANK_PATH}, "
                                              f"GET {HEALTH_PATH} or GET {READY_PATH}"), [])
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
        try:
            body = await asyncio.wait_for(self._read_body(receive, length), self.body_timeout_s)
        except asyncio.TimeoutError:
            return (*_error(408, "body_timeout",
                            f"body not received within {self.body_timeout_s:g} s"), close)
        if body is None:
            return (*_error(400, "bad_request", "body shorter than Content-Length", "body"), close)
        if self._pending >= self.max_pending:
            return (*_error(503, "overloaded", "too many requests waiting; retry"),
                    [(b"retry-after", b"1")])
        status, obj = await self._run(handle_rank_body, self.ranker, body)
        return status, obj, []

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._pending -= 1

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


class RankerServiceHandle:
    """A running ranker HTTP service.

    Attributes:
        port: the bound port.
        host: the bound interface.
        app: the ASGI app.
    """

    def __init__(self, server: AsgiServerHandle, app: RankerApp) -> None:
        self._server = server
        self.app = app
        self.host, self.port = server.host, server.port
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stops serving and closes the socket; idempotent."""
        if not self._stopped:
            self._stopped = True
            self._server.stop()
            self.app.close()

    def __enter__(self) -> "RankerServiceHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_ranker_service(
    ranker: Ranker,
    host: str = "127.0.0.1",
    port: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    workers: int = DEFAULT_WORKERS,
    max_pending: int = DEFAULT_MAX_PENDING,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    header_timeout_s: float = 10.0,
    auth_token: Optional[str] = None,
) -> RankerServiceHandle:
    """Serves ``ranker`` over HTTP (uvicorn) on a background thread.

    Args:
        ranker: the ranker.
        host: interface to bind (default: this machine only).
        port: port; 0 picks a free one.
        max_body_bytes: largest request body accepted.
        workers: ranker threads.
        max_pending: requests in the ranker (running or queued) before answering 503.
        body_timeout_s: most seconds for a body after its head.
        header_timeout_s: most seconds for a request head.
        auth_token: bearer token ``/v1/rank`` requires; None: no check.

    Returns:
        The handle (``port``, ``url``, ``stop()``).

    Raises:
        OSError: the address cannot be bound.
    """
    app = RankerApp(ranker, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s,
                    workers=workers, max_pending=max_pending, auth_token=auth_token)
    try:
        server = serve_asgi(app, host=host, port=port, header_timeout_s=header_timeout_s)
    except BaseException:
        app.close()
        raise
    log.info("ranker service on http://%s:%d", host, server.port)
    return RankerServiceHandle(server, app)


def read_token(path: Optional[str], env: str = TOKEN_ENV) -> Optional[str]:
    """The ranker's shared token: :func:`serving.model_server.guard.read_token` with
    ``$LIMAML_RANKER_TOKEN``."""
    return guard.read_token(path, env)


def _load_factory(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--embedding-lookup {spec!r}: expected 'package.module:factory'")
    return getattr(importlib.import_module(module_name), attr)


def build_arg_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``python -m serving.ranker_service``."""
    parser = argparse.ArgumentParser(description="LiMAML ranker HTTP service")
    parser.add_argument("--model-target", required=True, help="TF Serving gRPC host:port")
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--embedding-lookup", required=True,
                        help="'package.module:factory'; factory() returns the lookup")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (0.0.0.0: every interface, e.g. in a pod)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--timeout-s", type=float, default=1.0)
    parser.add_argument("--max-candidates", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--max-pending", type=int, default=DEFAULT_MAX_PENDING)
    parser.add_argument("--auth-token-file",
                        help=f"require 'Authorization: Bearer <token>' (else ${TOKEN_ENV})")
    parser.add_argument("--model-token-file",
                        help="token sent to the model server (its --auth_token_file)")
    parser.add_argument("--item-catalog",
                        help="JSON lines of items (item_id + item features) for the item cache")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the service until SIGINT/SIGTERM."""
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    lookup = _load_factory(args.embedding_lookup)()
    items = None
    if args.item_catalog:
        from serving.item_cache import ItemCache

        with open(args.item_catalog, encoding="utf-8") as fh:
            items = ItemCache.from_records(json.loads(line) for line in fh if line.strip())
    ranker = Ranker(args.model_target, args.model_name, lookup, timeout_s=args.timeout_s,
                    max_candidates=args.max_candidates, item_cache=items,
                    auth_token=guard.read_token(args.model_token_file))
    try:
        ranker.warm_up()
    except Exception as exc:  # noqa: BLE001 - a cold first call is slow, not wrong
        log.warning("ranker warm-up failed: %s", exc)
    handle = start_ranker_service(ranker, host=args.host, port=args.port, workers=args.workers,
                                  max_pending=args.max_pending,
                                  auth_token=read_token(args.auth_token_file))
    print(f"ranker service on {handle.url}", flush=True)
    wait_for_stop_signal()
    handle.stop()
    ranker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
