"""Where a pipeline run reads and writes, and how Beam runs: resolved by the runners."""
from __future__ import annotations

import dataclasses
import os
from typing import List, Tuple

PIPELINE_NAME = "limaml"


@dataclasses.dataclass(frozen=True)
class PipelinePaths:
    """Locations of one pipeline run.

    Attributes:
        data_dir: prepared data folder (``limaml data prepare`` output).
        pipeline_root: TFX artifacts.
        metadata_path: SQLite ML Metadata file (local runs).
        serving_base: TF Serving model base; blessed models are pushed to ``<serving_base>/<version>/``.
        report_dir: where ``metrics.json`` and ``index.html`` are copied for people to open.
    """

    data_dir: str
    pipeline_root: str
    metadata_path: str
    serving_base: str
    report_dir: str

    @classmethod
    def under(cls, output: str, data_dir: str) -> "PipelinePaths":
        """The default layout of a local run folder."""
        output = os.path.abspath(output)
        return cls(data_dir=os.path.abspath(data_dir),
                   pipeline_root=os.path.join(output, "pipeline"),
                   metadata_path=os.path.join(output, "metadata.sqlite"),
                   serving_base=os.path.join(output, "serving", "limaml"),
                   report_dir=os.path.join(output, "report"))


def beam_args(workers: int = 1) -> List[str]:
    """Beam pipeline args: DirectRunner in-process, or multi-process with ``workers`` > 1.

    On a cluster pass e.g. ``--runner=DataflowRunner --project=P --region=R --temp_location=gs://...``
    or ``--runner=FlinkRunner --flink_master=HOST:PORT --environment_type=LOOPBACK`` instead.
    """
    if workers <= 1:
        return ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
    return [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]


COMPONENT_IDS: Tuple[str, ...] = (
    "ProtocolExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
    "Transform", "TaskGen", "LimamlTrainer", "GlobalDnnTrainer", "WideDeepTrainer", "LinearTrainer",
    "LinearUserIdTrainer", "MetaEmbeddingGen", "EmbeddingJoin", "EvaluatorLimaml", "EvaluatorGlobalDnn",
    "EvaluatorLinear", "Report", "BlockPusher")
