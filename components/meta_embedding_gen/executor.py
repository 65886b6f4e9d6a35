"""TFX glue of MetaEmbeddingGen (logic in generate.py, store_io.py)."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import apache_beam as beam
import tensorflow_transform as tft
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components.common.examples_io import ReadRowsByUser, split_pattern
from components.common.model_version import model_version
from components.meta_embedding_gen import generate, store_io
from components.meta_embedding_gen.meta_block import MetaBlockLoader
from embeddings.parquet_store import ParquetEmbeddingStore
from limaml.config import LimamlConfig


def write_stores(cfg: LimamlConfig, staging_dir: str, store_root: str, version: str, generated_at: int,
                 cold) -> int:
    """Commits the staged rows to Parquet (always) and Bigtable (when configured). Returns users."""
    summary = ParquetEmbeddingStore(store_root).write(
        store_io.staged_batches(staging_dir, version, generated_at, cold))
    e = cfg.embeddings
    if e.bigtable_table:
        from embeddings.bigtable_store import BigtableEmbeddingStore

        BigtableEmbeddingStore.open(e.bigtable_project, e.bigtable_instance, e.bigtable_table,
                                    keep_versions=e.keep_versions).write(
            store_io.staged_batches(staging_dir, version, generated_at, cold))
    return int(summary.rows) - 1


class Executor(base_beam_executor.BaseBeamExecutor):
    """Generates embeddings with Beam, then commits them to the stores."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        cfg = LimamlConfig.from_json(exec_properties["limaml_config"])
        examples = artifact_utils.get_single_instance(input_dict["transformed_examples"])
        graph = artifact_utils.get_single_instance(input_dict["transform_graph"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        out = artifact_utils.get_single_instance(output_dict["meta_embeddings"])
        version = model_version(model)
        spec = tft.TFTransformOutput(graph.uri).transformed_feature_spec()
        staging = os.path.join(out.uri, store_io.STAGING)
        cold_file = os.path.join(staging, "cold.npy")
        loader = MetaBlockLoader(os.path.join(model.uri, "Format-Serving"))
        with self._make_beam_pipeline() as p:
            users = p | "ReadByUser" >> ReadRowsByUser(  # pylint: disable=no-value-for-parameter
                split_pattern(examples.uri, exec_properties.get("split") or "train"), spec)
            result = users | "Generate" >> generate.GenerateEmbeddings(  # pylint: disable=no-value-for-parameter
                loader, cfg.embeddings.max_recent, cfg.embeddings.aggregation,
                cfg.embeddings.users_per_batch, exec_properties.get("as_of"))
            (result["rows"]
             | "ToStaging" >> beam.Map(store_io.to_staging_record)
             | "Stage" >> beam.io.WriteToParquet(os.path.join(staging, "part"), store_io.STAGING_SCHEMA,
                                                 file_name_suffix=".parquet"))
            _ = result["cold"] | "StageCold" >> beam.Map(store_io.save_cold, cold_file)
        users_written = write_stores(cfg, staging, out.uri, version, generate.now(), store_io.load_cold(cold_file))
        out.set_string_custom_property("model_version", version)
        out.model_version = version
        out.users = users_written
