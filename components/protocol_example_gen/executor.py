"""TFX glue of the protocol-aware ExampleGen (logic in split.py and examples.py)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict

import apache_beam as beam
from google.protobuf import wrappers_pb2
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.proto import example_gen_pb2
from tfx.utils import proto_utils

from components.protocol_example_gen.examples import RowSerializer
from components.protocol_example_gen.split import ApplyProtocol
from limaml.config import LimamlConfig
from limaml.data import canonical

SPLITS = ("train", "eval")
CUTOFF_TS_KEY = "cutoff_ts"


def limaml_config_from_exec_properties(exec_properties: Dict[str, Any]) -> LimamlConfig:
    """Reads the LimamlConfig JSON packed in ExampleGen's custom_config."""
    custom = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties["custom_config"], custom)
    value = wrappers_pb2.StringValue()
    if not custom.custom_config.Unpack(value):
        raise ValueError("ProtocolExampleGen needs custom_config = StringValue(LimamlConfig JSON)")
    return LimamlConfig.from_json(value.value)


class Executor(BaseExampleGenExecutor):
    """Reads ``<input_base>/interactions/*.parquet`` once and emits the protocol's splits."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # pragma: no cover - unused
        raise NotImplementedError("ProtocolExampleGen overrides GenerateExamplesByBeam")

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline, exec_properties: Dict[str, Any]
                               ) -> Dict[str, beam.pvalue.PCollection]:
        cfg = limaml_config_from_exec_properties(exec_properties)
        cutoff = int(exec_properties.get(CUTOFF_TS_KEY) or 0)
        if cutoff > 0:
            cfg = dataclasses.replace(cfg, protocol=dataclasses.replace(cfg.protocol, cutoff_ts=cutoff))
        pattern = os.path.join(exec_properties["input_base"], canonical.INTERACTIONS_DIR, "*.parquet")
        rows = pipeline | "ReadParquet" >> beam.io.ReadFromParquet(pattern)
        splits = rows | "ApplyProtocol" >> ApplyProtocol(cfg.protocol)  # pylint: disable=no-value-for-parameter
        return {
            name: (splits[name]
                   | f"Serialize[{name}]" >> beam.Map(RowSerializer()))
            for name in SPLITS
        }


def custom_config(config: LimamlConfig) -> example_gen_pb2.CustomConfig:
    """Packs the run's config for the executor."""
    custom = example_gen_pb2.CustomConfig()
    custom.custom_config.Pack(wrappers_pb2.StringValue(value=config.to_json()))
    return custom


def input_config() -> example_gen_pb2.Input:
    """Two output splits from the same files: the executor routes rows by protocol role."""
    pattern = os.path.join(canonical.INTERACTIONS_DIR, "*.parquet")
    return example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name=n, pattern=pattern) for n in SPLITS])

