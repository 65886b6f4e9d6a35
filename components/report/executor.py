"""TFX glue of the Report component: resolves URIs, then runs :func:`report.writer.write_run_report`."""
from __future__ import annotations

import os
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from limaml.config import LimamlConfig
from limaml.data.protocols import cohort_names
from report import eval_config as ec
from report import metrics, writer
from report.metrics_schema import MULTI_BLOCK
from report.writer import PER_ROW_SCORES  # noqa: F401 - where the tests and readers find per-row scores

# Report input key of each model's Trainer output -> the model's name in metrics.json.
MODEL_INPUTS = {
    "limaml_model": "limaml",
    "global_dnn_model": "global_dnn",
    "wide_deep_model": "wide_deep_id",
    "linear_model": "linear",
    "linear_user_id_model": "linear_user_id",
}
# Optional inputs: the multi-block model (``ModelConfig.meta_blocks = ("user", "user_x_genre")``);
# when wired, it is scored and compared with limaml (``comparisons.limaml_multi_vs_limaml``).
OPTIONAL_MODEL_INPUTS = {"limaml_multi_model": MULTI_BLOCK}
# Its evaluation examples (the multi-block EmbeddingJoin's: 2E-wide ``meta_embedding``); without
# them it is scored on ``examples``.
MULTI_EXAMPLES_INPUT = "limaml_multi_examples"


def tfma_sources(evaluation: str, global_dnn_evaluation: str,
                 linear_evaluation: str) -> List[metrics.ModelSource]:
    """Where each trained model's TFMA results are (see ``pipeline/pipeline.py``'s Evaluators)."""
    return [metrics.ModelSource("limaml", evaluation, ec.CANDIDATE_MODEL_NAME),
            metrics.ModelSource("wide_deep_id", evaluation, ec.BASELINE_MODEL_NAME),
            metrics.ModelSource("global_dnn", global_dnn_evaluation, ec.SINGLE_MODEL_NAME),
            metrics.ModelSource("linear", linear_evaluation, ec.BASELINE_MODEL_NAME),
            metrics.ModelSource("linear_user_id", linear_evaluation, ec.CANDIDATE_MODEL_NAME)]


class Executor(base_executor.BaseExecutor):
    """Builds the report into the output artifact's folder."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        cfg = LimamlConfig.from_json(exec_properties["limaml_config"])

        def uri(key: str) -> str:
            return artifact_utils.get_single_instance(input_dict[key]).uri

        model_dirs = {name: path_utils.serving_model_dir(uri(key)) for key, name in MODEL_INPUTS.items()}
        for key, name in OPTIONAL_MODEL_INPUTS.items():
            if input_dict.get(key):
                model_dirs[name] = path_utils.serving_model_dir(uri(key))
        model_examples = {}
        if input_dict.get(MULTI_EXAMPLES_INPUT) and MULTI_BLOCK in model_dirs:
            model_examples[MULTI_BLOCK] = os.path.join(uri(MULTI_EXAMPLES_INPUT), "Split-eval", "*")
        writer.write_run_report(
            cfg.dataset, cfg.protocol.name, os.path.join(uri("examples"), "Split-eval", "*"),
            tfma_sources(uri("evaluation"), uri("baseline_evaluation"), uri("linear_evaluation")),
            model_dirs,
            artifact_utils.get_single_instance(output_dict["report"]).uri,
            cohorts=cohort_names(cfg.protocol.cohort_edges), seed=cfg.train.seed,
            beam_pipeline_args=getattr(self, "_beam_pipeline_args", None),
            model_examples=model_examples)
