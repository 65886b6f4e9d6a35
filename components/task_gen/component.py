"""TaskGen component spec: Transform outputs in, task records (train/eval splits) out."""
from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.task_gen import executor


class TaskGenSpec(types.ComponentSpec):
    """Inputs: transformed examples and the transform graph; output: task Examples."""

    PARAMETERS = {"limaml_config": ExecutionParameter(type=str)}
    INPUTS = {
        "transformed_examples": ChannelParameter(type=standard_artifacts.Examples),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
    }
    OUTPUTS = {"tasks": ChannelParameter(type=standard_artifacts.Examples)}


class TaskGen(base_beam_component.BaseBeamComponent):
    """Groups interactions by user, orders them by time and writes padded task records.

    Each record holds one task (support = earlier interactions, query = later ones) in the format
    of :mod:`trainer.task_record`; a long history gives several tasks. Tasks of ~10% of the users
    (stable hash) go to the ``eval`` split, the rest to ``train``.
    """

    SPEC_CLASS = TaskGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, transformed_examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 limaml_config: str) -> None:
        super().__init__(spec=TaskGenSpec(
            transformed_examples=transformed_examples, transform_graph=transform_graph,
            limaml_config=limaml_config,
            tasks=types.Channel(type=standard_artifacts.Examples)))
