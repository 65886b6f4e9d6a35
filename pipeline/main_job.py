"""The main job: run the pipeline locally, then publish the report where people look for it."""
from __future__ import annotations

import os
from typing import List, Optional

from components.artifacts.names import REPORT_TYPE
from limaml.config import LimamlConfig
from pipeline import local_runner
from pipeline.run_metadata import latest_artifact_uri
from pipeline.settings import PipelinePaths

__all__ = ["latest_artifact_uri", "run_main_job"]


def run_main_job(config: LimamlConfig, output: str, data_dir: str, workers: int = 1,
                 beam_args: Optional[List[str]] = None) -> PipelinePaths:
    """Runs the pipeline into ``output`` and copies the report to ``output/report``."""
    paths = PipelinePaths.under(output, data_dir)
    local_runner.run(config, paths, workers=workers, extra_beam_args=beam_args)
    local_runner.publish_report(latest_artifact_uri(paths.metadata_path, REPORT_TYPE), paths.report_dir)
    print(f"[run] report: {os.path.join(paths.report_dir, 'index.html')}")
    print(f"[run] metrics: {os.path.join(paths.report_dir, 'metrics.json')}")
    print(f"[run] pushed models (TF Serving base): {paths.serving_base}")
    return paths
