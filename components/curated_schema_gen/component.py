"""CuratedSchemaGen: imports the curated ``schema.pbtxt``, re-imported when the code changes.

TFX's ImportSchemaGen is keyed on the schema file's *path*, so an edited ``schema/schema.pbtxt``
at the same path (a new release, a new Kubeflow image) would come from the cache. This is the
same component with one more execution property, ``code_version`` (the fingerprint of the
pipeline's packages, :mod:`pipeline.code_version`, which covers ``schema.pbtxt``), as
ProtocolExampleGen has; its node id stays ``ImportSchemaGen``.
"""
from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter

from components.curated_schema_gen import executor

CODE_VERSION_KEY = "code_version"
NODE_ID = "ImportSchemaGen"


class CuratedSchemaGenSpec(standard_component_specs.ImportSchemaGenSpec):
    """ImportSchemaGen's spec plus ``code_version`` (cache key only)."""

    PARAMETERS = {**standard_component_specs.ImportSchemaGenSpec.PARAMETERS,
                  CODE_VERSION_KEY: ExecutionParameter(type=str, optional=True)}


class CuratedSchemaGen(base_component.BaseComponent):
    """Copies ``schema_file`` into a Schema artifact (TFX's ImportSchemaGen executor)."""

    SPEC_CLASS = CuratedSchemaGenSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, schema_file: str, code_version: str = "") -> None:
        """Args:
            schema_file: the schema's path as the executor sees it.
            code_version: the pipeline code's fingerprint.
        """
        super().__init__(spec=CuratedSchemaGenSpec(
            schema_file=schema_file, schema=types.Channel(type=standard_artifacts.Schema),
            **{CODE_VERSION_KEY: code_version}))
        self.with_id(NODE_ID)
