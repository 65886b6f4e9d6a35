"""Runs the pipeline locally: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner."""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import List, Optional

from tfx import v1 as tfx

from limaml.config import LimamlConfig
from limaml.console import console
from pipeline.pipeline import create_pipeline
from pipeline.progress import ProgressMonitor, format_profile, profile_rows
from pipeline.settings import PipelinePaths, beam_args


def run(config: LimamlConfig, paths: PipelinePaths, workers: int = 1,
        extra_beam_args: Optional[List[str]] = None) -> None:
    """Runs the whole pipeline; prints each component's wall time at the end and writes it to
    ``profile.json`` beside the metadata store."""
    monitor = ProgressMonitor(paths.metadata_path)
    monitor.prime()
    absl_logger = logging.getLogger("absl")
    # Training progress (steps, losses, early stopping) from the trainer's own loggers.
    train_handler = logging.StreamHandler(console())
    train_handler.setFormatter(logging.Formatter("[train] %(message)s"))
    train_logger = logging.getLogger("trainer")
    train_logger.addHandler(train_handler)
    train_logger.setLevel(logging.INFO)
    # Everything else (TFX, Beam, TFT, TFMA INFO chatter) only from WARNING up; the trainer's
    # lines only through their own handler.
    root = logging.getLogger()
    saved = (root.level, absl_logger.level, train_logger.propagate)
    root.setLevel(logging.WARNING)
    absl_logger.setLevel(logging.WARNING)
    train_logger.propagate = False
    monitor.start()
    try:
        pipeline = create_pipeline(config, paths.pipeline_root, paths.data_dir, paths.serving_base,
                                   metadata_path=paths.metadata_path,
                                   beam_pipeline_args=beam_args(workers) + list(extra_beam_args or []))
        tfx.orchestration.LocalDagRunner().run(pipeline)
    finally:
        monitor.stop()
        write_profile(monitor, os.path.join(os.path.dirname(paths.metadata_path), PROFILE_FILE))
        train_logger.removeHandler(train_handler)
        root.setLevel(saved[0])
        absl_logger.setLevel(saved[1])
        train_logger.propagate = saved[2]


PROFILE_FILE = "profile.json"


def write_profile(monitor: ProgressMonitor, path: str) -> bool:
    """Prints the run's component times and writes them to ``path`` (atomically).

    Returns whether the file was written. It runs after every run, failed ones included, so an
    OS error here is logged, never raised: it must not mask the run's own outcome.
    """
    wall = monitor.wall_seconds()
    rows = profile_rows(monitor.executions(), wall)
    if not rows:
        return False
    print(f"[run] component times:\n{format_profile(rows, wall)}", file=console(), flush=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump({"wall_seconds": round(wall, 1), "components": rows}, fh, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        logging.getLogger(__name__).warning("component times not written to %s: %s", path, exc)
        return False
    return True


def publish_report(report_uri: str, report_dir: str) -> None:
    """Copies the Report artifact's files to the run folder's ``report/``."""
    if os.path.exists(report_dir):
        shutil.rmtree(report_dir)
    shutil.copytree(report_uri, report_dir)
