"""``limaml bench train|embeddings|serve|linear``: benchmarks that print JSON rows (never test assertions).

Each delegates its flags to ``benchmarks.<name>.main(argv)``; ``limaml bench NAME --help`` lists them.
"""
from __future__ import annotations

import argparse
import importlib

_TARGETS = {
    "train": ("benchmarks.train_bench", "batched MAML trainer vs a per-task loop (tasks/s)"),
    "embeddings": ("benchmarks.embeddings_bench", "meta-embedding generation and store writes (users/s)"),
    "serve": ("benchmarks.serve_bench", "ranker latency under load vs the in-process model (ms)"),
    "linear": ("benchmarks.linear_bench", "the linear floor's Newton-CG vs scikit-learn's L-BFGS (s)"),
}


def _run(args: argparse.Namespace) -> int:
    module = importlib.import_module(_TARGETS[args.bench][0])
    return int(module.main(args.bench_args) or 0)


def register(sub: "argparse._SubParsersAction") -> None:
    """Adds ``bench`` and its targets."""
    bench = sub.add_parser("bench", help="benchmarks (print JSON rows)")
    targets = bench.add_subparsers(dest="bench", required=True)
    for name, (_, help_text) in _TARGETS.items():
        p = targets.add_parser(name, help=help_text, add_help=False)
        p.add_argument("bench_args", nargs=argparse.REMAINDER)
        # the serving benchmark's ranker runs in this process: gRPC's polling I/O, as in serve
        p.set_defaults(func=_run, grpc_serving=name == "serve")
