"""The embedding lookup's interface types: the store it reads and the result it returns.

:class:`EmbeddingStore` is what :class:`serving.embedding_lookup.EmbeddingLookup` needs of a store
(the Parquet and Bigtable stores have it); :class:`LookupResult` is its answer, with the source of
every row (:data:`SOURCE_CACHE`, :data:`SOURCE_STORE`, :data:`SOURCE_FALLBACK`).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Protocol, Sequence

import numpy as np

from embeddings.record import StoreLookup

SOURCE_CACHE = "cache"
SOURCE_STORE = "store"
SOURCE_FALLBACK = "fallback"


class EmbeddingStore(Protocol):
    """What :class:`EmbeddingLookup` needs from a store (Parquet and Bigtable stores have it)."""

    def lookup(self, user_ids: Sequence[str], model_version: str,
               timeout_s: Optional[float] = None) -> StoreLookup:
        """Embeddings [N, E] and found [N] of ``user_ids`` in ``model_version``."""


@dataclasses.dataclass(frozen=True)
class LookupResult:
    """Embeddings of N users for one model version.

    Attributes:
        embeddings: float32 [N, E].
        cold: bool [N]; True where the cold-start default was used (unknown user or store
            failure).
        source: object [N] of ``"cache"``, ``"store"`` or ``"fallback"`` (store failed/slow).
        degraded: None, or why some users got the default although the store may know them
            (store down, timed out, saturated) or why the default itself is a stand-in.
        model_version: the version asked for.
    """

    embeddings: np.ndarray
    cold: np.ndarray
    source: np.ndarray
    degraded: Optional[str]
    model_version: str

    @property
    def summary(self) -> Dict[str, int]:
        """Counts per source plus ``cold``."""
        out = {s: int((self.source == s).sum()) for s in (SOURCE_CACHE, SOURCE_STORE,
                                                          SOURCE_FALLBACK)}
        out["cold"] = int(self.cold.sum())
        return out
