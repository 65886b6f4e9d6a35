"""EmbeddingJoin component spec."""
from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.artifacts.types import MetaEmbeddings
from components.embedding_join import executor


class EmbeddingJoinSpec(types.ComponentSpec):
    PARAMETERS = {"split": ExecutionParameter(type=str)}
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "meta_embeddings": ChannelParameter(type=MetaEmbeddings),
        "model": ChannelParameter(type=standard_artifacts.Model),
    }
    OUTPUTS = {"joined_examples": ChannelParameter(type=standard_artifacts.Examples)}


class EmbeddingJoin(base_beam_component.BaseBeamComponent):
    """Adds each evaluation example's user meta embedding (cold-start default when the user has none).

    Fails when the embeddings were made by another model version than ``model``.
    """

    SPEC_CLASS = EmbeddingJoinSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, meta_embeddings: types.BaseChannel,
                 model: types.BaseChannel, split: str = "eval") -> None:
        super().__init__(spec=EmbeddingJoinSpec(
            examples=examples, meta_embeddings=meta_embeddings, model=model, split=split,
            joined_examples=types.Channel(type=standard_artifacts.Examples)))
