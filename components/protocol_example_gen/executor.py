"""TFX glue of the protocol-aware ExampleGen (logic in split.py)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict

import apache_beam as beam
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.proto import example_gen_pb2
from tfx.utils import proto_utils

from components.protocol_example_gen.split import ApplyProtocol
from limaml.config import LimamlConfig
from limaml.data import canonical
from schema import features as F

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


_KINDS = {**F.CANONICAL_COLUMNS, **F.OPTIONAL_COLUMNS, **F.PROTOCOL_COLUMNS}


def to_example(row: Dict[str, Any]) -> tf.train.Example:
    """Canonical row -> tf.Example, typed by the feature contract (zeros kept; None dropped)."""
    ex = tf.train.Example()
    for name, value in row.items():
        if value is None:
            continue
        kind = _KINDS.get(name)
        if kind is None:
            raise ValueError(f"column {name!r} is not in the feature contract (schema/features.py)")
        feat = ex.features.feature[name]
        if kind == "str":
            feat.bytes_list.value.append(str(value).encode())
        elif kind == "int64":
            feat.int64_list.value.append(int(value))
        else:
            feat.float_list.value.append(float(value))
    return ex


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
                   | f"ToExample[{name}]" >> beam.Map(to_example)
                   | f"Serialize[{name}]" >> beam.Map(lambda e: e.SerializeToString(deterministic=True)))
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

