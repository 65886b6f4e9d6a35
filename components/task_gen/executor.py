"""TFX glue of TaskGen (logic in tasks_beam.py)."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import apache_beam as beam
import tensorflow_transform as tft
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components.common.examples_io import split_pattern
from components.meta_embedding_gen.inputs import ReadUserBatchesFromExamples, buckets_for
from components.task_gen.tasks_beam import BuildTasksFromBatches
from limaml.config import LimamlConfig

SPLITS = ("train", "eval")


class Executor(base_beam_executor.BaseBeamExecutor):
    """Reads the transformed ``train`` split, writes ``Split-train`` and ``Split-eval`` task records."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        cfg = LimamlConfig.from_json(exec_properties["limaml_config"])
        examples = artifact_utils.get_single_instance(input_dict["transformed_examples"])
        graph = artifact_utils.get_single_instance(input_dict["transform_graph"])
        spec = tft.TFTransformOutput(graph.uri).transformed_feature_spec()
        out = artifact_utils.get_single_instance(output_dict["tasks"])
        out.split_names = artifact_utils.encode_split_names(list(SPLITS))
        pattern = split_pattern(examples.uri, "train")
        with self._make_beam_pipeline() as p:
            records = (p
                       | "ReadUsers" >> ReadUserBatchesFromExamples(pattern, spec, buckets_for(pattern))  # pylint: disable=no-value-for-parameter
                       | "Tasks" >> BuildTasksFromBatches(cfg.tasks))  # pylint: disable=no-value-for-parameter
            for split in SPLITS:
                (records
                 | f"Only[{split}]" >> beam.Filter(lambda kv, s=split: kv[0] == s)
                 | f"Value[{split}]" >> beam.Map(lambda kv: kv[1])
                 | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                     os.path.join(out.uri, f"Split-{split}", "tasks"), file_name_suffix=".gz"))
