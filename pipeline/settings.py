"""Where a pipeline run reads and writes, and how Beam runs: resolved by the runners."""
from __future__ import annotations

import dataclasses
import os
from typing import List, Tuple

from pipeline.run_metadata import METADATA_FILE

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
                   metadata_path=os.path.join(output, METADATA_FILE),
                   serving_base=os.path.join(output, "serving", "limaml"),
                   report_dir=os.path.join(output, "report"))


FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
PROJECT_SETUP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "setup.py")


def beam_args(workers: int = 1) -> List[str]:
    """Beam pipeline args of a local run: in process, or ``workers`` processes.

    * ``--runner`` names Beam's ``FnApiRunner``, where the ``DirectRunner`` ends up for these
      batch pipelines anyway, but only after trying the Prism runner first (Beam 2.74), which
      downloads a binary from GitHub: offline that fails in ~0.1 s per component (and leaves a
      ``beam-temp*`` folder); online the components would quietly run on a runner the tests
      never run; behind a firewall that drops packets, the download could hang.
    * ``--setup_file`` names this project's ``setup.py`` as the workers' dependencies. TFX's
      Beam components otherwise first package the installed TFX as an "ephemeral" sdist for
      remote workers (a 49 MB copy and a ``setup.py sdist`` subprocess, ~1.5 s per component,
      left in the temp folder); the FnApiRunner stages nothing (it runs in this environment).
      Without a ``setup.py`` beside the package (an installed wheel), the flag is left out and
      TFX builds its package.
    * ``workers`` > 1: ``--direct_num_workers`` processes (``--direct_running_mode``).

    On a cluster pass e.g. ``--runner=DataflowRunner --project=P --region=R --temp_location=gs://...``
    or ``--runner=FlinkRunner --flink_master=HOST:PORT --environment_type=LOOPBACK`` instead.
    """
    args = [f"--runner={FN_API_RUNNER}"]
    if os.path.isfile(PROJECT_SETUP_FILE):
        args.append(f"--setup_file={PROJECT_SETUP_FILE}")
    if workers > 1:
        args += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    return args


# Component ids of the pipeline (``pipeline/pipeline.py`` names its nodes with these; ML Metadata
# node contexts, Kubeflow tasks and artifact folders carry them).
LIMAML_TRAINER = "LimamlTrainer"
GLOBAL_DNN_TRAINER = "GlobalDnnTrainer"
WIDE_DEEP_TRAINER = "WideDeepTrainer"
LINEAR_TRAINER = "LinearTrainer"
LINEAR_USER_ID_TRAINER = "LinearUserIdTrainer"
EMBEDDING_JOIN = "EmbeddingJoin"
EVALUATOR_LIMAML = "EvaluatorLimaml"
EVALUATOR_GLOBAL_DNN = "EvaluatorGlobalDnn"
EVALUATOR_LINEAR = "EvaluatorLinear"

# The multi-block LiMAML's nodes (``EvaluationConfig.multi_block``).
LIMAML_MULTI_TRAINER = "LimamlMultiTrainer"
META_EMBEDDING_GEN_MULTI = "MetaEmbeddingGenMulti"
EMBEDDING_JOIN_MULTI = "EmbeddingJoinMulti"
EVALUATOR_LIMAML_MULTI = "EvaluatorLimamlMulti"

COMPONENT_IDS: Tuple[str, ...] = (
    "ProtocolExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
    "Transform", "TaskGen", LIMAML_TRAINER, GLOBAL_DNN_TRAINER, WIDE_DEEP_TRAINER, LINEAR_TRAINER,
    LINEAR_USER_ID_TRAINER, "MetaEmbeddingGen", EMBEDDING_JOIN, EVALUATOR_LIMAML, EVALUATOR_GLOBAL_DNN,
    EVALUATOR_LINEAR, "Report", "BlockPusher")
MULTI_BLOCK_COMPONENT_IDS: Tuple[str, ...] = (
    LIMAML_MULTI_TRAINER, META_EMBEDDING_GEN_MULTI, EMBEDDING_JOIN_MULTI, EVALUATOR_LIMAML_MULTI)
"""Nodes added after :data:`COMPONENT_IDS` when ``EvaluationConfig.multi_block`` is on."""


def component_ids(multi_block: bool = False) -> Tuple[str, ...]:
    """The pipeline's node ids, with the multi-block LiMAML's when ``multi_block``."""
    return COMPONENT_IDS + (MULTI_BLOCK_COMPONENT_IDS if multi_block else ())
