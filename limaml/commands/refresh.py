"""``limaml refresh``: regenerate meta embeddings of users with new interactions (no retraining).

Example::

    limaml refresh --model serving/42 --data data/synthetic --as-of 2024-01-31 \\
        --store parquet:embeddings

Logic in :mod:`components.meta_embedding_gen.refresh`; prints the summary as one JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json


def _run(args: argparse.Namespace) -> int:
    from components.meta_embedding_gen import refresh

    summary = refresh.refresh(args.model, args.data, args.as_of, store=args.store,
                              beam_args=args.beam_arg, timeout_s=args.timeout, create=args.create)
    print(json.dumps(dataclasses.asdict(summary), sort_keys=True))
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    """Adds the ``refresh`` sub-command."""
    p = sub.add_parser(
        "refresh", help="regenerate meta embeddings of users with new interactions, with a pushed model",
        description="Fine-tunes the pushed model's meta block for every user with interactions newer "
                    "than their stored embedding (or without one), as of --as-of, and commits a new "
                    "complete copy of the model version's embeddings (other rows carried over).")
    p.add_argument("--model", required=True,
                   help="pushed version folder <serving_base>/<version> (its name is the model version)")
    p.add_argument("--data", required=True,
                   help="prepared data folder (output of limaml data prepare: canonical Parquet)")
    p.add_argument("--as-of", required=True,
                   help="unix seconds or ISO date/time (a date is 00:00 UTC; no zone means UTC)")
    p.add_argument("--store",
                   help="parquet:<dir> or bigtable:<project>/<instance>/<table> "
                        "(default: the Bigtable table of the model's config)")
    p.add_argument("--create", action="store_true",
                   help="the store may not exist yet: start a new Parquet folder or Bigtable table "
                        "(without it a missing store is an error, so a typo cannot regenerate every user)")
    p.add_argument("--timeout", type=float, default=30.0, help="Bigtable read deadline in seconds")
    p.add_argument("--beam-arg", action="append", default=[], help="extra Beam flag (repeatable)")
    p.set_defaults(func=_run)
