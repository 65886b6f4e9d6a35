"""MetaEmbeddingGen component spec."""
from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.artifacts.types import MetaEmbeddings
from components.meta_embedding_gen import executor


class MetaEmbeddingGenSpec(types.ComponentSpec):
    PARAMETERS = {
        "limaml_config": ExecutionParameter(type=str),
        "as_of": ExecutionParameter(type=int, optional=True),
        "split": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "transformed_examples": ChannelParameter(type=standard_artifacts.Examples),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
        "model": ChannelParameter(type=standard_artifacts.Model),
    }
    OUTPUTS = {"meta_embeddings": ChannelParameter(type=MetaEmbeddings)}


class MetaEmbeddingGen(base_beam_component.BaseBeamComponent):
    """Fine-tunes the meta block on each user's recent interactions and stores the meta embeddings.

    Output: a ``limaml.MetaEmbeddings`` artifact (Parquet store at its URI), tagged with the
    model version; also written to Bigtable when the config names a table.
    """

    SPEC_CLASS = MetaEmbeddingGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, transformed_examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 model: types.BaseChannel, limaml_config: str, as_of: int | None = None,
                 split: str = "train") -> None:
        super().__init__(spec=MetaEmbeddingGenSpec(
            transformed_examples=transformed_examples, transform_graph=transform_graph, model=model,
            limaml_config=limaml_config, as_of=as_of, split=split,
            meta_embeddings=types.Channel(type=MetaEmbeddings)))
