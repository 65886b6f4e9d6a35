"""Synthetic inputs of the serving benchmark: a constant embedding lookup and candidates.

Used by :func:`benchmarks.serve_bench.run_serve_bench` when no real lookup or candidates are
given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from schema import features as F


@dataclass
class _Result:
    embeddings: np.ndarray
    cold: np.ndarray
    degraded: Optional[str] = None


class ConstantEmbeddingLookup:
    """A lookup that gives every user the same embedding (benchmark default).

    Args:
        embedding_dim: E.
        seed: seed of the embedding values.
    """

    def __init__(self, embedding_dim: int, seed: int = 0) -> None:
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim={embedding_dim}; must be >= 1")
        self.vector = np.random.default_rng(seed).normal(size=embedding_dim).astype(np.float32)

    def lookup(self, user_ids: Sequence[str], model_version: str) -> _Result:
        """Returns the constant embedding for every user; never cold."""
        n = len(user_ids)
        return _Result(np.tile(self.vector, (n, 1)), np.zeros(n, bool), None)


def synthetic_candidates(n: int, required: Sequence[str]) -> List[Dict[str, Any]]:
    """``n`` candidates with plausible values for every required feature, by canonical kind."""
    out = []
    for i in range(n):
        cand: Dict[str, Any] = {}
        for name in required:
            kind = F.CANONICAL_COLUMNS[name]
            if name == F.GENRES:
                cand[name] = F.GENRE_SEPARATOR.join(("Drama", "Comedy")[: 1 + i % 2])
            elif kind == "str":
                cand[name] = f"{name}-{i}"
            elif kind == "int64":
                cand[name] = 1950 + (i * 7) % 70
            else:
                cand[name] = float(i % 5) / 5.0
        out.append(cand)
    return out
