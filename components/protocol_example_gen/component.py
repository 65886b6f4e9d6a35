"""ProtocolExampleGen: a file-based ExampleGen over canonical Parquet with a protocol-aware executor.

It keeps TFX's FileBasedDriver, so the input files' fingerprint decides caching (changed data ->
new run; unchanged -> cached), and adds one runtime-settable parameter, ``cutoff_ts``, and
``code_version`` (the pipeline code's fingerprint, :mod:`pipeline.code_version`: changed code
re-runs the pipeline from here).
"""
from __future__ import annotations

from typing import Union

from tfx import types
from tfx.components.example_gen import driver, utils
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.orchestration import data_types
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter

from components.protocol_example_gen import executor
from limaml.config import LimamlConfig

CODE_VERSION_KEY = "code_version"


class ProtocolExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    """FileBasedExampleGen's spec plus ``cutoff_ts`` (0 = take the cutoff from the config) and
    ``code_version`` (part of the cache key only; the executor ignores it)."""

    PARAMETERS = {**standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
                  executor.CUTOFF_TS_KEY: ExecutionParameter(type=int, optional=True),
                  CODE_VERSION_KEY: ExecutionParameter(type=str, optional=True)}


class ProtocolExampleGen(base_beam_component.BaseBeamComponent):
    """ExampleGen whose ``train`` split holds trainable rows and ``eval`` the query rows."""

    SPEC_CLASS = ProtocolExampleGenSpec
    DRIVER_CLASS = driver.FileBasedDriver
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, input_base: Union[str, data_types.RuntimeParameter], config: LimamlConfig,
                 cutoff_ts: Union[int, data_types.RuntimeParameter] = 0,
                 code_version: str = "") -> None:
        """Args:
            input_base: prepared data folder (``limaml data prepare`` output).
            config: the run's settings (protocol section used).
            cutoff_ts: cutoff protocol's T in seconds, overriding the config when > 0.
            code_version: the pipeline code's fingerprint (cache key only).
        """
        input_config = executor.input_config()
        super().__init__(spec=ProtocolExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=utils.make_default_output_config(input_config),
            custom_config=executor.custom_config(config),
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            examples=types.Channel(type=standard_artifacts.Examples),
            **{executor.CUTOFF_TS_KEY: cutoff_ts, CODE_VERSION_KEY: code_version}))
