"""ProtocolExampleGen: a FileBasedExampleGen over canonical Parquet with a protocol-aware executor."""
from __future__ import annotations

from typing import Union

from tfx.components import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.orchestration import data_types

from components.protocol_example_gen import executor
from limaml.config import LimamlConfig


def ProtocolExampleGen(input_base: Union[str, data_types.RuntimeParameter],  # pylint: disable=invalid-name
                       config: LimamlConfig) -> FileBasedExampleGen:
    """ExampleGen whose ``train`` split holds trainable rows and ``eval`` the query rows.

    Args:
        input_base: prepared data folder (``limaml data prepare`` output).
        config: the run's settings (protocol section used).
    """
    return FileBasedExampleGen(
        input_base=input_base,
        input_config=executor.input_config(),
        custom_config=executor.custom_config(config),
        custom_executor_spec=executor_spec.BeamExecutorSpec(executor.Executor),
    )
