"""One end-to-end pipeline run per test session, shared by every end-to-end test.

The run uses a small synthetic dataset (planted preferences, so the oracle is known) and a
short training schedule; it is slow (~minutes on 2 cores), so it happens once, lazily, in a
session-scoped fixture, and tests read its artifacts through ML Metadata.
"""
from __future__ import annotations

import dataclasses
import os

import pytest

from limaml.config import EvaluationConfig, LimamlConfig, ProtocolConfig, TaskConfig, TrainConfig
from limaml.data import synthetic

E2E_SYNTHETIC = synthetic.SyntheticConfig(num_users=500, num_items=120, mean_interactions=25,
                                          max_interactions=200, seed=11)
E2E_CONFIG = LimamlConfig(
    dataset="synthetic",
    protocol=ProtocolConfig(name="cutoff", cutoff_quantile=0.75),
    tasks=TaskConfig(support_size=16, query_size=8, max_tasks_per_user=4),
    train=TrainConfig(tasks_per_batch=32, epochs=3, baseline_epochs=3, baseline_batch_size=256),
    # Short training: tolerate a regression so the run pushes a model for the serving tests.
    evaluation=EvaluationConfig(min_auc=0.5, min_auc_change=-0.05),
)


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    """Where the session's pipeline run put things."""

    output: str
    data_dir: str
    config: LimamlConfig
    paths: object

    @property
    def metadata_path(self) -> str:
        return self.paths.metadata_path


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> PipelineRun:
    """Prepares the e2e dataset and runs the whole pipeline once (LocalDagRunner, SQLite MLMD)."""
    from limaml.data import prepare
    from pipeline.main_job import run_main_job

    root = tmp_path_factory.mktemp("e2e")
    data_dir = os.path.join(str(root), "data")
    prepare.prepare("synthetic", data_dir, synthetic_cfg=E2E_SYNTHETIC, protocol=E2E_CONFIG.protocol)
    output = os.path.join(str(root), "run")
    paths = run_main_job(E2E_CONFIG, output, data_dir)
    return PipelineRun(output=output, data_dir=data_dir, config=E2E_CONFIG, paths=paths)
