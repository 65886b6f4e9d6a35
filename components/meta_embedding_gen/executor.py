"""TFX glue of MetaEmbeddingGen (logic in inputs.py, generate.py, bigtable_sink.py, store_io.py)."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import tensorflow_transform as tft
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components.artifacts.names import MODEL_VERSION_PROPERTY
from components.common.examples_io import split_pattern
from components.common.model_version import model_version
from components.meta_embedding_gen import generate, inputs, store_io
from components.meta_embedding_gen.bigtable_sink import BigtableTarget, WriteBigtableRows
from components.meta_embedding_gen.meta_block import MetaBlockLoader, genre_set_arg
from components.meta_embedding_gen.store_io import write_stores  # noqa: F401 (re-exported)
from limaml.config import LimamlConfig


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
        cold_file = os.path.join(staging, generate.COLD_FILE)
        store_io.clear_staging(staging)
        loader = MetaBlockLoader(os.path.join(model.uri, "Format-Serving"))
        genres = genre_set_arg(os.path.join(model.uri, "Format-Serving"))
        e = cfg.embeddings
        generated_at = generate.now()
        pattern = split_pattern(examples.uri, exec_properties.get("split") or "train")
        # Bigtable first: an unreachable table fails the run before anything is written.
        bigtable = store_io.open_bigtable(cfg)
        attempt = bigtable.begin_write(version) if bigtable is not None else None
        sink = None if attempt is None else WriteBigtableRows(BigtableTarget(
            e.bigtable_project, e.bigtable_instance, e.bigtable_table, attempt, generated_at))
        with self._make_beam_pipeline() as p:
            users = p | "ReadUserBatches" >> inputs.ReadUserBatchesFromExamples(  # pylint: disable=no-value-for-parameter
                pattern, spec, inputs.buckets_for(pattern))
            result = users | "Generate" >> generate.GenerateEmbeddings(  # pylint: disable=no-value-for-parameter
                loader, e.max_recent, e.aggregation, e.users_per_batch, exec_properties.get("as_of"),
                genres)
            generate.stage_embeddings(result, staging, sink)
        users_written = write_stores(cfg, staging, out.uri, version, generated_at,
                                     store_io.load_cold(cold_file), bigtable_attempt=attempt)
        out.set_string_custom_property(MODEL_VERSION_PROPERTY, version)
        out.set_int_custom_property("users", users_written)
