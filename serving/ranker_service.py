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

Every ``/v1/rank`` answer carries ``Server-Timing: prepare;dur=.., queue;dur=.., predict;dur=..,
total;dur=..`` (ms; :mod:`serving.server_timing`): the ranker's preparation, the wait for the
Predict in flight, the Predict's round trip to the model server and the ranker's total (a ranker
without ``batch_requests`` reports ``total`` only).

``GET /healthz`` -> 200 ``{"status": "ok"}`` while the process serves HTTP (liveness).
``GET /readyz``  -> 200 ``{"status": "ready", "model_version": "2"}`` when the model server
serves a version *and* that version's meta embeddings are readable from the store, else 503.

``GET /metrics``  -> 200, Prometheus' text format (``text/plain; version=0.0.4``): answers by
path and status, ranking errors by code, cold starts, degraded answers, candidates, histograms of
the ranking's ``total`` and ``predict`` times, the served version and the pending requests
(:mod:`serving.ranker_metrics`).

Authentication (optional): with ``auth_token`` set (``--auth-token-file`` or
``LIMAML_RANKER_TOKEN``), ``POST /v1/rank`` needs ``Authorization: Bearer <token>``; the probes
(``/healthz``, ``/readyz``) stay open for the kubelet, and ``/metrics`` for the scraper.

Server: uvicorn on a socket with a listen backlog of 2048, keep-alive, a request-head deadline,
bounded head size, at most ``max_pending`` requests in the ranker at once (queued for
``workers`` threads), the rest answered 503 at once (see :func:`start_ranker_service`). With a
batching ranker (``batch_requests``) the Predicts are sent from the event loop and requests
whose inputs are in memory are prepared there too (:mod:`serving.ranker_app`).

Run: ``start_ranker_service(ranker, port=0)`` in process, or ``python -m serving.ranker_service
--model-target host:8500 --model-name global_block --embedding-lookup pkg.module:factory``
(binds 127.0.0.1 unless ``--host`` says otherwise).

Modules: :mod:`serving.rank_handlers` (a body -> status and JSON; the error table above),
:mod:`serving.ranker_app` (the ASGI app: routes, token, bodies, backpressure); this one starts
and stops the service and is its command line.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Optional, Sequence

from serving.http_server import AsgiServerHandle, serve_asgi
from serving.model_server import guard
from serving.rank_handlers import handle_rank_body, handle_ready, parse_rank_body
from serving.ranker import Ranker
from serving.ranker_app import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PENDING,
    DEFAULT_WORKERS,
    HEALTH_PATH,
    RANK_PATH,
    READY_PATH,
    RankerApp,
)
from serving.signals import wait_for_stop_signal

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_PENDING", "DEFAULT_WORKERS",
    "HEALTH_PATH", "RANK_PATH", "READY_PATH", "TOKEN_ENV", "RankerApp", "RankerServiceHandle",
    "build_arg_parser", "handle_rank_body", "handle_ready", "main", "parse_rank_body",
    "read_token", "start_ranker_service",
]

log = logging.getLogger(__name__)

TOKEN_ENV = "LIMAML_RANKER_TOKEN"


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
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
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
        connect_timeout_s: a batching ranker connects its model-server channel before serving,
            waiting at most this long (a server that is down delays the start by this much).

    Returns:
        The handle (``port``, ``url``, ``stop()``).

    Raises:
        OSError: the address cannot be bound.
    """
    app = RankerApp(ranker, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s,
                    workers=workers, max_pending=max_pending, auth_token=auth_token,
                    connect_timeout_s=connect_timeout_s)
    try:
        # lifespan: a batching app connects its model-server channel before serving
        server = serve_asgi(app, host=host, port=port, header_timeout_s=header_timeout_s,
                            lifespan="on")
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
    parser.add_argument("--batch-requests", action=argparse.BooleanOptionalAction, default=True,
                        help="concurrent requests share one Predict, sent from the event loop "
                             "(default on, as in limaml serve; --no-batch-requests: one "
                             "Predict per request)")
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
                    auth_token=guard.read_token(args.model_token_file),
                    batch_requests=args.batch_requests)
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
