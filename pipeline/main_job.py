"""The main job: run the pipeline locally, then publish the report where people look for it."""
from __future__ import annotations

import os
from typing import List, Optional

from limaml.config import LimamlConfig
from pipeline import local_runner
from pipeline.settings import PipelinePaths


def latest_artifact_uri(metadata_path: str, type_name: str) -> str:
    """URI of the newest artifact of ``type_name`` in a SQLite ML Metadata store."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    store = metadata_store.MetadataStore(cfg)
    arts = store.get_artifacts_by_type(type_name)
    if not arts:
        raise RuntimeError(f"no {type_name} artifact in {metadata_path}; did the pipeline finish?")
    return max(arts, key=lambda a: a.id).uri


def run_main_job(config: LimamlConfig, output: str, data_dir: str, workers: int = 1,
                 beam_args: Optional[List[str]] = None) -> PipelinePaths:
    """Runs the pipeline into ``output`` and copies the report to ``output/report``."""
    paths = PipelinePaths.under(output, data_dir)
    local_runner.run(config, paths, workers=workers, extra_beam_args=beam_args)
    local_runner.publish_report(latest_artifact_uri(paths.metadata_path, "limaml.Report"), paths.report_dir)
    print(f"[run] report: {os.path.join(paths.report_dir, 'index.html')}")
    print(f"[run] metrics: {os.path.join(paths.report_dir, 'metrics.json')}")
    print(f"[run] pushed models (TF Serving base): {paths.serving_base}")
    return paths
