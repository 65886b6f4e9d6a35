"""TFX glue of the Report component (logic in the ``report`` package and ``scoring.py``)."""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, List

import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components.report import scoring
from limaml.config import LimamlConfig
from limaml.data.protocols import cohort_names
from report import eval_config as ec
from report import metrics, paired, writer
from schema import features as F

# Report input key of each model's Trainer output -> the model's name in metrics.json.
MODEL_INPUTS = {
    "limaml_model": "limaml",
    "global_dnn_model": "global_dnn",
    "wide_deep_model": "wide_deep_id",
    "linear_model": "linear",
    "linear_user_id_model": "linear_user_id",
}
REFERENCE_MODEL = "limaml"
BOOTSTRAP_RESAMPLES = 1000
PER_ROW_SCORES = "per_row_scores.parquet"
ORACLE_TFMA = "oracle_tfma"


def has_oracle(pattern: str) -> bool:
    """True when the evaluation examples carry the synthetic data's true click probability."""
    for path in sorted(glob.glob(pattern))[:1]:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").take(1):
            return F.ORACLE_PROB in tf.train.Example.FromString(record.numpy()).features.feature
    return False


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
        examples = artifact_utils.get_single_instance(input_dict["examples"])

        def uri(key: str) -> str:
            return artifact_utils.get_single_instance(input_dict[key]).uri

        out = artifact_utils.get_single_instance(output_dict["report"]).uri
        pattern = os.path.join(examples.uri, "Split-eval", "*")
        cohorts = cohort_names(cfg.protocol.cohort_edges)
        sources = tfma_sources(uri("evaluation"), uri("baseline_evaluation"), uri("linear_evaluation"))
        if has_oracle(pattern):
            sources.append(writer.run_oracle_evaluation(
                pattern, os.path.join(out, ORACLE_TFMA),
                beam_pipeline_args=getattr(self, "_beam_pipeline_args", None)))

        models = {name: path_utils.serving_model_dir(uri(key)) for key, name in MODEL_INPUTS.items()}
        rows = scoring.score_examples(scoring.example_files(pattern), models)
        rows.to_frame().to_parquet(os.path.join(out, PER_ROW_SCORES), index=False)
        print(f"[report] scored {len(rows)} evaluation rows with {len(models)} models")
        comparisons = paired.paired_bootstrap(
            rows.user_ids, rows.labels, rows.scores, rows.cohorts, reference=REFERENCE_MODEL,
            cohort_names=cohorts, n_resamples=BOOTSTRAP_RESAMPLES, seed=cfg.train.seed)
        note = (f"Paired comparisons: each model's served SavedModel (serving_default) scored the same "
                f"{len(rows)} evaluation rows; {BOOTSTRAP_RESAMPLES} bootstrap resamples of users, seed "
                f"{cfg.train.seed}; per-row predictions in {PER_ROW_SCORES}.")
        paths = writer.write_report(cfg.dataset, cfg.protocol.name, sources, out,
                                    users_per_cohort=rows.users_per_cohort(cohorts), cohorts=cohorts,
                                    comparisons=comparisons, notes_extra=[note])
        print(f"[report] written {paths['html']}")
