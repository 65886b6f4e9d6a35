"""Report component spec."""
from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.artifacts.types import Report as ReportArtifact
from components.report import executor
from components.report.executor import MODEL_INPUTS, MULTI_EXAMPLES_INPUT, OPTIONAL_MODEL_INPUTS


class ReportSpec(types.ComponentSpec):
    PARAMETERS = {"limaml_config": ExecutionParameter(type=str)}
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "baseline_evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "linear_evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        **{key: ChannelParameter(type=standard_artifacts.Model) for key in MODEL_INPUTS},
        **{key: ChannelParameter(type=standard_artifacts.Model, optional=True)
           for key in OPTIONAL_MODEL_INPUTS},
        MULTI_EXAMPLES_INPUT: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {"report": ChannelParameter(type=ReportArtifact)}


class Report(base_component.BaseComponent):
    """Writes ``metrics.json`` and ``index.html`` with ``report.writer.write_report``.

    Metrics come from TFMA (with its confidence intervals): ``evaluation`` is the LiMAML
    Evaluator's output (candidate = limaml, baseline = wide & deep with user id),
    ``baseline_evaluation`` the global DNN's, ``linear_evaluation`` the linear models' (candidate =
    linear_user_id, baseline = linear). For synthetic data (examples carrying ``oracle_prob``) the
    oracle is evaluated here with TFMA, model-agnostic.

    The paired comparisons (LiMAML vs every other model, per-user bootstrap) need per-row
    predictions: each model's served SavedModel (``Format-Serving``) scores the evaluation
    examples (``components/report/scoring.py``); the rows are kept in ``per_row_scores.parquet``.

    ``limaml_multi_model`` (optional): the multi-block LiMAML. When given, it is scored on the
    same rows, ``metrics.json`` gains ``models.limaml_multi`` (from its per-row scores, no TFMA
    run) and ``comparisons.limaml_multi_vs_limaml``, and the report shows both.
    ``limaml_multi_examples`` (optional): the multi-block EmbeddingJoin's examples (its
    ``meta_embedding`` is 2E wide, the other models' E): the multi-block model is scored on them,
    row for row the same evaluation rows (matched by user, label, cohort, item, timestamp).
    """

    SPEC_CLASS = ReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, evaluation: types.BaseChannel,
                 baseline_evaluation: types.BaseChannel, linear_evaluation: types.BaseChannel,
                 limaml_model: types.BaseChannel, global_dnn_model: types.BaseChannel,
                 wide_deep_model: types.BaseChannel, linear_model: types.BaseChannel,
                 linear_user_id_model: types.BaseChannel, limaml_config: str,
                 limaml_multi_model: Optional[types.BaseChannel] = None,
                 limaml_multi_examples: Optional[types.BaseChannel] = None) -> None:
        super().__init__(spec=ReportSpec(
            examples=examples, evaluation=evaluation, baseline_evaluation=baseline_evaluation,
            linear_evaluation=linear_evaluation, limaml_model=limaml_model,
            global_dnn_model=global_dnn_model, wide_deep_model=wide_deep_model,
            linear_model=linear_model, linear_user_id_model=linear_user_id_model,
            limaml_multi_model=limaml_multi_model, limaml_multi_examples=limaml_multi_examples,
            limaml_config=limaml_config, report=types.Channel(type=ReportArtifact)))
