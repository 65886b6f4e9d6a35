"""``limaml serve`` (the local serving stack of a run) and ``limaml score`` (one request).

``limaml serve --run DIR`` starts, in one process, the model server on ``DIR/serving/limaml``
(``tensorflow_model_server`` if on PATH, else the TF Serving-compatible stand-in), the run's
meta embeddings (Parquet, or ``--store bigtable``: the Bigtable emulator loaded with them) and
the ranker HTTP service, prints where each listens and serves until Ctrl-C / SIGTERM.

``limaml score --run DIR --user U --candidates FILE.jsonl`` starts the same stack on free ports,
sends one ``POST /v1/rank``, prints the JSON response and stops; ``--ranker URL`` sends the
request to a running ``limaml serve`` instead. ``FILE.jsonl`` holds one candidate per line (a JSON
object of raw features: ``item_id``, ``genres``, ``release_year`` ...); ``-`` reads stdin.

The heavy imports (TensorFlow, gRPC, Bigtable) happen inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from limaml.console import console

DEFAULT_PORT_MODEL = 8500
DEFAULT_PORT_RANKER = 8080
RUN_ENV = "LIMAML_RUN"


def _add_stack_flags(p: argparse.ArgumentParser, default_ports: bool) -> None:
    p.add_argument("--model-base", metavar="DIR",
                   help="TF Serving model base to serve instead of RUN/serving/limaml (e.g. a "
                        "manual push of a model the pipeline did not bless)")
    p.add_argument("--store", choices=["parquet", "bigtable"], default="parquet",
                   help="embedding store: the run's Parquet output, or the Bigtable emulator "
                        "loaded with it (default: parquet)")
    p.add_argument("--bigtable-emulator-host", metavar="HOST:PORT",
                   help="--store bigtable: use this running emulator instead of starting one")
    p.add_argument("--model-server-binary", metavar="PATH",
                   help="TF Serving binary (default: tensorflow_model_server on PATH, else the "
                        "stand-in; '' forces the stand-in)")
    p.add_argument("--port-model", type=int, default=DEFAULT_PORT_MODEL if default_ports else 0,
                   help="model server gRPC port (0: any free port)")
    p.add_argument("--port-ranker", type=int, default=DEFAULT_PORT_RANKER if default_ports else 0,
                   help="ranker HTTP port (0: any free port)")
    p.add_argument("--timeout-s", type=float, default=5.0, help="ranker gRPC deadline")
    p.add_argument("--embedding-timeout-s", type=float, default=1.0,
                   help="embedding store call budget (slower: cold-start default, 'degraded')")
    p.add_argument("--batch-requests", action=argparse.BooleanOptionalAction, default=True,
                   help="concurrent rank requests share one Predict (serving/predict_batcher.py; "
                        "default on; ML-100K: about 3x the requests/s at 200 clients)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="ranker threads (default 8); concurrent requests on them share Predicts")
    p.add_argument("--model-server-process", action=argparse.BooleanOptionalAction,
                   default=default_ports,
                   help="without tensorflow_model_server: run the stand-in as its own process, "
                        "as the binary runs, not as threads of the ranker's process (default: "
                        "on for serve, off for score)")


def _run_dir(args: argparse.Namespace) -> str:
    run = args.run or os.environ.get(RUN_ENV)
    if not run:
        raise ValueError(f"pass --run DIR (the --output folder of `limaml run`) or set ${RUN_ENV}")
    return run


def _start(args: argparse.Namespace, host: str = "127.0.0.1"):
    from serving.local_stack import start_local_stack

    return start_local_stack(
        _run_dir(args), port_model=args.port_model, port_ranker=args.port_ranker,
        store=args.store, host=host, model_base_dir=args.model_base,
        model_server_binary=args.model_server_binary,
        bigtable_emulator_host=args.bigtable_emulator_host, timeout_s=args.timeout_s,
        embedding_timeout_s=args.embedding_timeout_s,
        batch_requests=getattr(args, "batch_requests", True),
        model_server_process=getattr(args, "model_server_process", False),
        workers=getattr(args, "workers", None))


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        stack = _start(args, host=args.host)
    except KeyboardInterrupt:
        print("[serve] interrupted during start-up", file=console())
        return 130
    done = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: done.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for line in stack.describe():
            print(f"[serve] {line}", flush=True)
        print(f"[serve] try: limaml score --ranker {stack.ranker_url} --user USER "
              "--candidates FILE.jsonl", flush=True)
        print("[serve] serving; Ctrl-C to stop", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        print("[serve] stopping", flush=True)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("[serve] stopped", flush=True)
    return 0


def read_candidates(path: str) -> List[Dict[str, Any]]:
    """Candidates from a JSON Lines file (one JSON object per non-empty line; ``-``: stdin).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line is not a JSON object (names the line), or the file holds none.
    """
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"candidates file {path!r} does not exist")
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object of raw candidate features, "
                             f"got {type(obj).__name__}")
        out.append(obj)
    if not out:
        raise ValueError(f"{path}: no candidates (write one JSON object per line)")
    return out


def _user_features(text: Optional[str]) -> Optional[Dict[str, Any]]:
    if not text:
        return None
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as fh:
            text = fh.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--user-features is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"--user-features must be a JSON object, got {type(obj).__name__}")
    return obj


def _cmd_score(args: argparse.Namespace) -> int:
    from serving.rank_client import post_json, rank_url

    payload: Dict[str, Any] = {"user_id": args.user, "candidates": read_candidates(args.candidates)}
    user_features = _user_features(args.user_features)
    if user_features is not None:
        payload["user_features"] = user_features
    if args.ranker and args.run:
        raise ValueError("give --run DIR or --ranker URL, not both")
    if not args.ranker and not (args.run or os.environ.get(RUN_ENV)):
        raise ValueError("pass --run DIR (start the stack for this request) or --ranker URL "
                         "(a running `limaml serve`)")
    if args.ranker:
        status, body = post_json(rank_url(args.ranker), payload, timeout_s=args.http_timeout_s)
    else:
        stack = _start(args)
        try:
            status, body = post_json(rank_url(stack.ranker_url), payload,
                                     timeout_s=args.http_timeout_s)
        finally:
            stack.stop()
    print(json.dumps(body, indent=None if args.compact else 2), flush=True)
    if status != 200:
        print(f"limaml: ranker answered HTTP {status}", file=console())
        return 1
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    """Adds the ``serve`` and ``score`` sub-commands."""
    serve = sub.add_parser(
        "serve", help="serve a run locally: model server + embedding store + ranker HTTP service",
        description=__doc__.split("\n\n")[1])
    serve.add_argument("--run", help=f"run folder (--output of `limaml run`; default ${RUN_ENV})")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface of the ranker HTTP service (0.0.0.0: all)")
    _add_stack_flags(serve, default_ports=True)
    serve.set_defaults(func=_cmd_serve, log_folder="run", grpc_serving=True)

    score = sub.add_parser(
        "score", help="score candidates for one user (one request) and print the JSON response")
    score.add_argument("--run", help="run folder: start the stack on free ports for this request")
    score.add_argument("--ranker", metavar="URL",
                       help="a running ranker service, e.g. http://127.0.0.1:8080")
    score.add_argument("--user", required=True, help="user id")
    score.add_argument("--candidates", required=True, metavar="FILE.jsonl",
                       help="one JSON object of raw candidate features per line ('-': stdin)")
    score.add_argument("--user-features", metavar="JSON",
                       help="raw user features as a JSON object (or @file), e.g. "
                            "'{\"age_bucket\": \"25\", \"gender\": \"F\", ...}'")
    score.add_argument("--http-timeout-s", type=float, default=60.0)
    score.add_argument("--compact", action="store_true", help="one-line JSON")
    _add_stack_flags(score, default_ports=False)
    score.set_defaults(func=_cmd_score, log_folder="run", grpc_serving=True)
