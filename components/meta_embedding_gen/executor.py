"""TFX glue of MetaEmbeddingGen (logic in generate.py, store_io.py)."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import tensorflow_transform as tft
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components.artifacts.names import MODEL_VERSION_PROPERTY
from components.common.examples_io import ReadRowsByUser, split_pattern
from components.common.model_version import model_version
from components.meta_embedding_gen import generate, store_io
from components.meta_embedding_gen.meta_block import MetaBlockLoader
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
        with self._make_beam_pipeline() as p:
            users = p | "ReadByUser" >> ReadRowsByUser(  # pylint: disable=no-value-for-parameter
                split_pattern(examples.uri, exec_properties.get("split") or "train"), spec)
            result = users | "Generate" >> generate.GenerateEmbeddings(  # pylint: disable=no-value-for-parameter
                loader, cfg.embeddings.max_recent, cfg.embeddings.aggregation,
                cfg.embeddings.users_per_batch, exec_properties.get("as_of"))
            generate.stage_embeddings(result, staging)
        users_written = write_stores(cfg, staging, out.uri, version, generate.now(), store_io.load_cold(cold_file))
        out.set_string_custom_property(MODEL_VERSION_PROPERTY, version)
        out.set_int_custom_property("users", users_written)
