"""The start of a store write: the batch stream and its first batch.

Both stores' ``write`` (:mod:`embeddings.parquet_write`, :mod:`embeddings.bigtable_write`) take one
:class:`~embeddings.record.EmbeddingBatch` or an iterable of them and need the first batch before
anything is written (its version and E); :func:`first_batch` gives it and the rest of the stream.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Tuple, Union

from embeddings.record import EmbeddingBatch, batches_of


def first_batch(batches: Union[EmbeddingBatch, Iterable[EmbeddingBatch]]
                ) -> Tuple[Iterator[EmbeddingBatch], EmbeddingBatch]:
    """``(rest of the stream, first batch)`` of a write's input.

    Raises:
        ValueError: the input holds no batch.
    """
    it = iter(batches_of(batches))
    first = next(it, None)
    if first is None:
        raise ValueError("no batches to write: pass at least one EmbeddingBatch")
    return it, first
