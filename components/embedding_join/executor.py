"""TFX glue of EmbeddingJoin (logic in join.py)."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import apache_beam as beam
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components.artifacts.names import MODEL_VERSION_PROPERTY
from components.common.examples_io import split_pattern
from components.common.model_version import model_version
from components.embedding_join.join import JoinEmbeddings, is_cold_row
from components.embedding_join.multi_block import JoinMultiBlockEmbeddings, read_pairs
from components.meta_embedding_gen.meta_block import meta_blocks_of
from embeddings.parquet_store import ParquetEmbeddingStore
from serving.multi_block import is_multi_block


class Executor(base_beam_executor.BaseBeamExecutor):
    """Writes ``Split-<split>`` of the joined examples.

    A single-block model gets ``[e_user]`` per example (:mod:`join`); a model with the user ×
    genre block gets ``[e_user, e_user×g]`` for the example's primary genre (:mod:`multi_block`).
    """

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        split = exec_properties["split"]
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        emb = artifact_utils.get_single_instance(input_dict["meta_embeddings"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        version = model_version(model)
        made_by = emb.get_string_custom_property(MODEL_VERSION_PROPERTY)
        if made_by != version:
            raise ValueError(f"meta embeddings of model version {made_by} cannot feed model version {version}; "
                             f"rerun MetaEmbeddingGen with the model being evaluated")
        store = ParquetEmbeddingStore(emb.uri)
        cold = store.cold_start_default(version)
        if cold is None:
            raise ValueError(f"{emb.uri}: version {version} has no cold-start default row")
        # the files of the version's committed copy (manifest -> immutable commit folder); a store
        # in the pre-manifest layout keeps its files directly in the version folder
        commit = store.version_metadata(version).get("commit") or ""
        parquet = os.path.join(str(store.version_dir(version)), commit, "*.parquet")
        out = artifact_utils.get_single_instance(output_dict["joined_examples"])
        out.split_names = artifact_utils.encode_split_names([split])
        model_dir = os.path.join(model.uri, "Format-Serving")
        multi = is_multi_block(meta_blocks_of(model_dir))
        with self._make_beam_pipeline() as p:
            raw = p | "Read" >> beam.io.ReadFromTFRecord(split_pattern(examples.uri, split))
            vectors = (p
                       | "ReadEmbeddings" >> beam.io.ReadFromParquet(parquet, columns=["user_id", "embedding"])
                       | "NotCold" >> beam.Filter(lambda r: not is_cold_row(r["user_id"]))
                       | "Pair" >> beam.Map(read_pairs))
            if multi:
                joined = raw | "JoinMultiBlock" >> JoinMultiBlockEmbeddings(vectors, cold, model_dir)  # pylint: disable=no-value-for-parameter
            else:
                joined = raw | "Join" >> JoinEmbeddings(vectors, cold, model_dir)  # pylint: disable=no-value-for-parameter
            _ = joined | "Write" >> beam.io.WriteToTFRecord(
                os.path.join(out.uri, f"Split-{split}", "data"), file_name_suffix=".gz")
