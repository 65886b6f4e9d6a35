"""Report component spec."""
from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.artifacts.types import Report as ReportArtifact
from components.report import executor


class ReportSpec(types.ComponentSpec):
    PARAMETERS = {"limaml_config": ExecutionParameter(type=str)}
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "baseline_evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
    }
    OUTPUTS = {"report": ChannelParameter(type=ReportArtifact)}


class Report(base_component.BaseComponent):
    """Writes ``metrics.json`` (read from TFMA, with its confidence intervals) and ``index.html``.

    ``evaluation`` is the LiMAML Evaluator's output (candidate = limaml, baseline = wide & deep
    with user id), ``baseline_evaluation`` the global DNN's. For synthetic data (examples carrying
    ``oracle_prob``) the oracle is evaluated here with TFMA, model-agnostic.
    """

    SPEC_CLASS = ReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, evaluation: types.BaseChannel,
                 baseline_evaluation: types.BaseChannel, limaml_config: str) -> None:
        super().__init__(spec=ReportSpec(
            examples=examples, evaluation=evaluation, baseline_evaluation=baseline_evaluation,
            limaml_config=limaml_config, report=types.Channel(type=ReportArtifact)))
