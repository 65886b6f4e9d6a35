"""Bigtable rows written from every Beam worker during MEG, committed after the job.

The driver opens the table and starts a write attempt (:meth:`BigtableEmbeddingStore.begin_write`)
before the Beam job; each worker writes the rows of the Arrow tables it produces in parallel
``mutate_rows`` chunks under that attempt (:class:`WriteBigtableRows`); nothing is visible until
the driver, after the job, writes the cold-start row and the version pointer
(:func:`components.meta_embedding_gen.store_io.write_stores` with the attempt). A failed job
leaves the previous commit serving.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional

import apache_beam as beam


@dataclasses.dataclass(frozen=True)
class BigtableTarget:
    """Where and how workers write (picklable).

    Attributes:
        project, instance, table: Bigtable ids (the client honours ``BIGTABLE_EMULATOR_HOST``).
        attempt: the :class:`embeddings.bigtable_store.WriteAttempt` started by the driver.
        generated_at: unix seconds stored with every row.
        write_threads: ``mutate_rows`` RPCs in flight per worker.
        mutation_chunk_rows: rows per RPC.
    """

    project: str
    instance: str
    table: str
    attempt: Any
    generated_at: int
    write_threads: int = 4
    mutation_chunk_rows: int = 1000


class WriteBigtableRows(beam.DoFn):
    """``pa.Table`` (staging schema) -> its rows in Bigtable under the target's attempt; yields counts."""

    def __init__(self, target: BigtableTarget) -> None:
        self._target = target
        self._store: Optional[Any] = None

    def setup(self) -> None:
        from embeddings.bigtable_store import BigtableEmbeddingStore

        t = self._target
        self._store = BigtableEmbeddingStore.open(
            t.project, t.instance, t.table, create_if_missing=False,
            write_threads=t.write_threads, mutation_chunk_rows=t.mutation_chunk_rows)

    def process(self, table) -> Iterable[int]:
        from components.meta_embedding_gen.store_io import table_to_batch

        t = self._target
        if table.num_rows:
            yield self._store.write_rows(
                t.attempt, table_to_batch(table, t.attempt.model_version, t.generated_at))
