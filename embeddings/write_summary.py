"""The result of a committed meta-embedding write, shared by both stores.

:meth:`embeddings.parquet_store.ParquetEmbeddingStore.write` and
:meth:`embeddings.bigtable_store.BigtableEmbeddingStore.write` return a :class:`WriteSummary`.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class WriteSummary:
    """Result of a committed write.

    Attributes:
        model_version: version written.
        num_users: rows written (including the cold-start row).
        embedding_dim: E.
        location: where the version lives (a directory, or ``table/version`` for Bigtable).
        seconds: wall time of the write.
    """

    model_version: str
    num_users: int
    embedding_dim: int
    location: str
    seconds: float

    @property
    def rows(self) -> int:
        """Alias of ``num_users`` (rows written, the cold-start row included)."""
        return self.num_users
