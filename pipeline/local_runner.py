"""Runs the pipeline locally: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from typing import List, Optional

from tfx import v1 as tfx

from limaml.config import LimamlConfig
from pipeline.pipeline import create_pipeline
from pipeline.settings import PipelinePaths, beam_args


class _ProgressFilter(logging.Filter):
    """Keeps TFX's per-component progress lines, timestamped, out of the INFO flood."""

    def __init__(self) -> None:
        super().__init__()
        self.start = time.time()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        msg = record.getMessage()
        if msg.startswith("Component ") and (" is running" in msg or " is finished" in msg):
            record.msg = f"[run {time.time() - self.start:6.0f}s] {msg}"
            record.args = ()
            return True
        return False


def run(config: LimamlConfig, paths: PipelinePaths, workers: int = 1,
        extra_beam_args: Optional[List[str]] = None) -> None:
    """Runs the whole pipeline and copies the report to ``paths.report_dir``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ProgressFilter())
    handler.setFormatter(logging.Formatter("%(message)s"))
    # TFX reports progress through absl's logger; some components reset the root logger's
    # handlers, so the progress handler hangs on the "absl" logger itself.
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(handler)
    absl_logger.setLevel(logging.INFO)
    # Training progress (steps, losses, early stopping) from the trainer's own loggers.
    train_handler = logging.StreamHandler(sys.stderr)
    train_handler.setFormatter(logging.Formatter("[train] %(message)s"))
    train_logger = logging.getLogger("trainer")
    train_logger.addHandler(train_handler)
    train_logger.setLevel(logging.INFO)
    # Everything else (Beam, TFT, TFMA INFO chatter) only from WARNING up, and our two loggers
    # only through their own handlers.
    root = logging.getLogger()
    saved = (root.level, absl_logger.propagate, train_logger.propagate)
    root.setLevel(logging.WARNING)
    absl_logger.propagate = train_logger.propagate = False
    try:
        pipeline = create_pipeline(config, paths.pipeline_root, paths.data_dir, paths.serving_base,
                                   metadata_path=paths.metadata_path,
                                   beam_pipeline_args=beam_args(workers) + list(extra_beam_args or []))
        tfx.orchestration.LocalDagRunner().run(pipeline)
    finally:
        absl_logger.removeHandler(handler)
        train_logger.removeHandler(train_handler)
        root.setLevel(saved[0])
        absl_logger.propagate, train_logger.propagate = saved[1], saved[2]


def publish_report(report_uri: str, report_dir: str) -> None:
    """Copies the Report artifact's files to the run folder's ``report/``."""
    if os.path.exists(report_dir):
        shutil.rmtree(report_dir)
    shutil.copytree(report_uri, report_dir)
