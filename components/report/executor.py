"""TFX glue of the Report component (logic in the ``report`` package)."""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, List

import tensorflow as tf
import tensorflow_model_analysis as tfma
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from limaml.config import LimamlConfig
from limaml.data.protocols import cohort_names
from report import eval_config as ec
from report import html, metrics
from schema import features as F


def has_oracle(pattern: str) -> bool:
    """True when the evaluation examples carry the synthetic data's true click probability."""
    for path in sorted(glob.glob(pattern))[:1]:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").take(1):
            return F.ORACLE_PROB in tf.train.Example.FromString(record.numpy()).features.feature
    return False


class Executor(base_executor.BaseExecutor):
    """Builds the report into the output artifact's folder."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        cfg = LimamlConfig.from_json(exec_properties["limaml_config"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        evaluation = artifact_utils.get_single_instance(input_dict["evaluation"]).uri
        dnn = artifact_utils.get_single_instance(input_dict["baseline_evaluation"]).uri
        out = artifact_utils.get_single_instance(output_dict["report"]).uri
        pattern = os.path.join(examples.uri, "Split-eval", "*")
        cohorts = cohort_names(cfg.protocol.cohort_edges)
        sources = [metrics.ModelSource("limaml", evaluation, ec.CANDIDATE_MODEL_NAME),
                   metrics.ModelSource("wide_deep_id", evaluation, ec.BASELINE_MODEL_NAME),
                   metrics.ModelSource("global_dnn", dnn, ec.SINGLE_MODEL_NAME)]
        if has_oracle(pattern):
            oracle_dir = os.path.join(out, "oracle_tfma")
            tfma.run_model_analysis(eval_config=ec.make_oracle_eval_config(), data_location=pattern,
                                    output_path=oracle_dir)
            sources.append(metrics.ModelSource("oracle", oracle_dir, ec.SINGLE_MODEL_NAME))
        users = metrics.users_per_cohort_from_examples(pattern, cohorts=cohorts)
        result = metrics.build_metrics(cfg.dataset, cfg.protocol.name, sources, users, cohorts=cohorts)
        calibration = metrics.read_calibration(sources)
        path = html.render_report(result, calibration, None, out,
                                  notes=[ec.describe_ci_method(ec.make_eval_config())])
        print(f"[report] written {path}")
