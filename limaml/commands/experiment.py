"""``limaml experiment`` and ``limaml tune``: every model on the pipeline's split, without TFX.

``experiment`` reruns training and evaluation with several seeds (and, with ``--folds K``, on
each of K user folds, pooled; :mod:`trainer.crossfit`) and prints mean and spread per model and
cohort, and paired bootstrap intervals (over users) of LiMAML's AUC difference to each
other model, the difference averaged over seeds. ``tune`` searches settings on a validation
split carved from the trainable rows (never the query rows) with the same budget per model.
Both write JSON (and ``experiment`` an HTML page) when ``--output`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List

from limaml.console import console


def _frame(data_dir: str):
    import pandas as pd

    from limaml.data import canonical

    manifest = canonical.read_manifest(data_dir)
    path = os.path.join(data_dir, "interactions", "data.parquet")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; run `limaml data prepare ... --output {data_dir}`")
    return pd.read_parquet(path), manifest["dataset"]


def _config(path, dataset: str):
    from limaml.config import LimamlConfig, default_protocol

    if path:
        with open(path) as f:
            return LimamlConfig.from_json(f.read())
    return LimamlConfig(dataset=dataset, protocol=default_protocol(dataset))


def _progress(line: str) -> None:
    print(f"[experiment] {line}", file=console(), flush=True)


def _cmd_experiment(args: argparse.Namespace) -> int:
    from trainer import experiment

    frame, dataset = _frame(args.data)
    cfg = _config(args.config, dataset)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    models = args.models.split(",")
    tuned = None
    if args.tuned:
        with open(args.tuned) as f:
            tuned = json.load(f)["best"]
    if args.folds:
        from trainer import crossfit

        result = crossfit.run(frame, cfg, args.folds, models, seeds=seeds, progress=_progress,
                              tuned=tuned)
    else:
        result = experiment.run(frame, cfg, models, seeds=seeds, progress=_progress, tuned=tuned)
    summary = experiment.report(result, cfg, n_resamples=args.resamples)
    print(json.dumps(summary, indent=1))
    if args.output:
        experiment.write_outputs(summary, args.output)
        print(f"[experiment] written {os.path.join(args.output, 'experiment.json')}", file=console())
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from trainer import tuning

    if args.merge:
        unused = [f"--{k}" for k in ("data", "grid", "models", "config") if getattr(args, k)]
        if unused:
            raise ValueError(f"limaml tune --merge joins finished tuning.json files; drop {unused}")
        parts = []
        for path in args.merge:
            with open(path) as f:
                parts.append(json.load(f))
        result = tuning.merge(parts)
    else:
        if not (args.data and args.grid):
            raise ValueError("limaml tune needs --data and --grid (or --merge TUNING_JSON ...)")
        frame, dataset = _frame(args.data)
        cfg = _config(args.config, dataset)
        with open(args.grid) as f:
            grid: Dict[str, List[Dict[str, Any]]] = json.load(f)
        result = tuning.tune(frame, cfg, grid,
                             models=args.models.split(",") if args.models else None,
                             progress=_progress)
    print(json.dumps(result["table"], indent=1))
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "tuning.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    """Adds ``experiment`` and ``tune``."""
    exp = sub.add_parser("experiment", help="all models x several seeds on the pipeline's split")
    exp.add_argument("--data", required=True, help="prepared data folder (limaml data prepare)")
    exp.add_argument("--seeds", type=int, default=3, help="number of training seeds")
    exp.add_argument("--first-seed", type=int, default=0)
    exp.add_argument("--models", default="limaml,global_dnn,wide_deep,linear,linear_user_id")
    exp.add_argument("--config", help="LimamlConfig JSON (default: built-in settings for the dataset)")
    exp.add_argument("--tuned", help="tuning.json of `limaml tune`: each model's chosen settings")
    exp.add_argument("--folds", type=int, default=0,
                     help="cross-fitting (budget protocol): split the users into this many folds "
                          "and evaluate each fold with models trained on the others, so every "
                          "user is evaluated once (0: one split, the protocol's eval_fraction)")
    exp.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples over users")
    exp.add_argument("--output", help="folder for experiment.json and index.html")
    exp.set_defaults(func=_cmd_experiment, log_folder="output")

    tune = sub.add_parser("tune", help="search settings on a validation split of training users")
    tune.add_argument("--data", help="prepared data folder")
    tune.add_argument("--grid",
                      help="JSON {model: [{section: {field: value}}, ...]}, the same number of "
                           "candidates per model (see benchmarks/tuning_grid.json)")
    tune.add_argument("--models", help="subset of the grid's models")
    tune.add_argument("--config", help="LimamlConfig JSON to start from")
    tune.add_argument("--merge", nargs="+", metavar="TUNING_JSON",
                      help="instead of tuning: join tuning.json files of disjoint --models runs "
                           "(same grid, same data), e.g. models tuned in parallel processes")
    tune.add_argument("--output", help="folder for tuning.json")
    tune.set_defaults(func=_cmd_tune, log_folder="output")
