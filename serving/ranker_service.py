"""HTTP JSON front end of the ranker (stdlib ``http.server``, one thread per connection).

API
---

``POST /v1/rank`` with ``Content-Type: application/json`` and a body::

    {"user_id": "u42",
     "candidates": [{"item_id": "i1", "genres": "Drama|Comedy", "release_year": 1995}, ...],
     "user_features": {"age_bucket": "25", ...}}          # optional

Each candidate holds raw features named as in ``schema.features``; the required ones are the
ranker's ``required_features`` (default: item id and item features). Types follow
``schema.features.CANONICAL_COLUMNS``: strings, integers (int64), numbers (float64).

Responses (always a JSON object, ``Content-Type: application/json``):

    200  {"scores": [0.71, ...],        # click probability per candidate, in request order
          "model_version": "2",         # served version; the embedding came from the same one
          "cold_start": false,          # true: no embedding for the user, cold-start default used
          "degraded": null}             # or why the embedding may be stale/default (store down)
    400  {"error": "...", "field": "candidates[3].release_year"}   malformed JSON or request
    404  {"error": "..."}               unknown path
    405  {"error": "..."}               wrong method for the path
    411  {"error": "..."}               no Content-Length
    413  {"error": "..."}               body larger than max_body_bytes
    502  {"error": "..."}               the model server rejected the request (contract mismatch)
    503  {"error": "..."}               model server down/slow, or the embedding lookup failed
    500  {"error": "..."}               anything else (logged); the service keeps serving

``GET /healthz`` -> 200 ``{"status": "ok"}`` while the process serves HTTP (liveness).
``GET /readyz``  -> 200 ``{"status": "ready", "model_version": "2"}`` when the model server
answers, else 503 (readiness).

Run: ``start_ranker_service(ranker, port=0)`` in process, or ``python -m serving.ranker_service
--model-target host:8500 --model-name global_block --embedding-lookup pkg.module:factory``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Sequence, Tuple

from serving.ranker import (
    EmbeddingLookupError,
    InvalidRequest,
    ModelServerError,
    ModelServerUnavailable,
    Ranker,
)

log = logging.getLogger(__name__)

RANK_PATH = "/v1/rank"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
DEFAULT_MAX_BODY_BYTES = 4 << 20
_REQUEST_KEYS = ("user_id", "candidates", "user_features")


class _HttpError(Exception):
    def __init__(self, status: int, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def handle_rank_body(ranker: Ranker, body: bytes) -> Tuple[int, Dict[str, Any]]:
    """Answers one ``/v1/rank`` body: ``(HTTP status, JSON object)``; never raises."""
    try:
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _HttpError(400, f"body is not valid UTF-8 JSON: {exc}", "body") from None
        if not isinstance(payload, dict):
            raise _HttpError(400, f"body must be a JSON object, got {type(payload).__name__}",
                             "body")
        extra = sorted(set(payload) - set(_REQUEST_KEYS))
        if extra:
            raise _HttpError(400, f"unknown request field(s) {extra}; allowed: "
                                  f"{list(_REQUEST_KEYS)}", extra[0])
        if "user_id" not in payload:
            raise _HttpError(400, "user_id: missing", "user_id")
        if "candidates" not in payload:
            raise _HttpError(400, "candidates: missing", "candidates")
        resp = ranker.rank(payload["user_id"], payload["candidates"], payload.get("user_features"))
        return 200, resp.to_json()
    except _HttpError as exc:
        return exc.status, {"error": exc.message, "field": exc.field}
    except InvalidRequest as exc:
        return 400, {"error": str(exc), "field": exc.field}
    except (ModelServerUnavailable, EmbeddingLookupError) as exc:
        return 503, {"error": str(exc)}
    except ModelServerError as exc:
        return 502, {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - answer 500, keep serving
        log.exception("ranker service: unexpected error")
        return 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}


def _make_handler(ranker: Ranker, max_body_bytes: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
        server_version = "limaml-ranker/1"
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + the
        # client's delayed ACK add ~40 ms to every keep-alive response.
        disable_nagle_algorithm = True
        timeout = 30  # seconds a client may stall mid-request before its socket is closed

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet by default
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, obj: Dict[str, Any]) -> None:
            data = json.dumps(obj).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _path(self) -> str:
            return self.path.split("?", 1)[0]

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            try:
                path = self._path()
                if path == HEALTH_PATH:
                    self._send(200, {"status": "ok"})
                elif path == READY_PATH:
                    try:
                        version = ranker.model_version()
                        self._send(200, {"status": "ready", "model_version": str(version)})
                    except ModelServerError as exc:
                        self._send(503, {"status": "unavailable", "error": str(exc)})
                elif path == RANK_PATH:
                    self._send(405, {"error": f"use POST for {RANK_PATH}"})
                else:
                    self._send(404, {"error": f"unknown path {path!r}; use POST {RANK_PATH}, "
                                              f"GET {HEALTH_PATH} or GET {READY_PATH}"})
            except Exception:  # noqa: BLE001 - e.g. client went away
                log.exception("ranker service: GET failed")

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            try:
                path = self._path()
                length_header = self.headers.get("Content-Length")
                if length_header is None:
                    self.close_connection = True
                    self._send(411, {"error": "Content-Length header required"})
                    return
                try:
                    length = int(length_header)
                    if length < 0:
                        raise ValueError
                except ValueError:
                    self.close_connection = True
                    self._send(400, {"error": f"bad Content-Length {length_header!r}"})
                    return
                if length > max_body_bytes:
                    self.close_connection = True
                    self._send(413, {"error": f"body of {length} bytes is larger than "
                                              f"{max_body_bytes}; send fewer candidates"})
                    return
                body = self.rfile.read(length)
                if path != RANK_PATH:
                    self._send(404 if path not in (HEALTH_PATH, READY_PATH) else 405,
                               {"error": f"unknown path {path!r}; use POST {RANK_PATH}"})
                    return
                status, obj = handle_rank_body(ranker, body)
                self._send(status, obj)
            except Exception:  # noqa: BLE001 - e.g. client went away
                log.exception("ranker service: POST failed")
                self.close_connection = True

    return Handler


class RankerServiceHandle:
    """A running ranker HTTP service.

    Attributes:
        port: the bound port.
        host: the bound interface.
    """

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host, self.port = server.server_address[:2]
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stops serving and closes the socket; idempotent."""
        if not self._stopped:
            self._stopped = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self) -> "RankerServiceHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_ranker_service(
    ranker: Ranker,
    host: str = "127.0.0.1",
    port: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> RankerServiceHandle:
    """Serves ``ranker`` over HTTP on a background thread.

    Args:
        ranker: the ranker.
        host: interface to bind.
        port: port; 0 picks a free one.
        max_body_bytes: largest request body accepted.

    Returns:
        The handle (``port``, ``url``, ``stop()``).
    """
    server = ThreadingHTTPServer((host, port), _make_handler(ranker, max_body_bytes))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="ranker-http", daemon=True)
    thread.start()
    log.info("ranker service on http://%s:%d", host, server.server_address[1])
    return RankerServiceHandle(server, thread)


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
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--timeout-s", type=float, default=1.0)
    parser.add_argument("--max-candidates", type=int, default=1000)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the service until SIGINT/SIGTERM."""
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    lookup = _load_factory(args.embedding_lookup)()
    ranker = Ranker(args.model_target, args.model_name, lookup, timeout_s=args.timeout_s,
                    max_candidates=args.max_candidates)
    handle = start_ranker_service(ranker, host=args.host, port=args.port)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"ranker service on {handle.url}", flush=True)
    done.wait()
    handle.stop()
    ranker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
