"""CuratedSchemaGen's executor: TFX's ImportSchemaGen executor, unchanged.

It copies ``schema_file`` into the output Schema artifact and reads no other execution property,
so ``code_version`` (:mod:`components.curated_schema_gen.component`) only reaches the cache key.
"""
from __future__ import annotations

from tfx.components.schema_gen.import_schema_gen.executor import Executor

__all__ = ["Executor"]
