"""The ranker's interface types: the embedding lookup it calls and the response it returns.

:class:`EmbeddingLookup` is what :class:`serving.ranker.Ranker` needs of an embedding lookup
(:class:`serving.embedding_lookup.EmbeddingLookup` implements it); :class:`RankResponse` is the
result of a ranking request.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Sequence

import numpy as np


class LookupResultLike(Protocol):
    """What ``EmbeddingLookup.lookup`` returns (``serving.embedding_lookup.LookupResult``)."""

    embeddings: np.ndarray
    cold: np.ndarray
    degraded: Optional[str]


class EmbeddingLookup(Protocol):
    """The embedding lookup interface the ranker uses."""

    def lookup(self, user_ids: Sequence[str], model_version: str) -> LookupResultLike:
        """Embeddings of ``user_ids`` made by ``model_version``, cold-start default if none."""


@dataclass(frozen=True)
class RankResponse:
    """The result of ``Ranker.rank``.

    Attributes:
        scores: click probability per candidate, in candidate order.
        model_version: the served model version that scored them (and made the embedding).
        cold_start: the user had no embedding for that version; the cold-start default was used.
        degraded: why the embedding may be worse than usual (store down/slow), else None.
    """

    scores: List[float]
    model_version: str
    cold_start: bool
    degraded: Optional[str] = None
    fallbacks: Optional[Dict[str, int]] = None

    def to_json(self) -> Dict[str, Any]:
        """The response as a JSON-ready dict (``fallbacks`` only for a multi-block model)."""
        out = {"scores": list(self.scores), "model_version": self.model_version,
               "cold_start": self.cold_start, "degraded": self.degraded}
        if self.fallbacks is not None:
            out["fallbacks"] = dict(self.fallbacks)
        return out


@dataclass
class PredictJob:
    """A validated request whose ``predict_raw`` Predict is still to be sent (by a batcher).

    Attributes:
        version: the pinned model version (its embeddings were looked up).
        inputs: the ``predict_raw`` inputs (name -> dtype enum), without the embedding.
        rows: the candidates' inputs and embedding rows in wire form
            (:class:`serving.predict_wire.EncodedRows`), which the event loop's batcher joins
            into one request.
        cold: the cold-start flag of the response.
        degraded: the lookup's degradation reason, or None.
        fallbacks: a multi-block model's per-candidate fallback counts, else None.
        queued_at: ``time.perf_counter()`` when the batcher queued the job (None before).
        queue_s: set by the batcher once answered: seconds between the job being queued and
            its Predict going out (None until then).
        predict_s: set by the batcher once answered: the round trip of the Predict that
            carried the job (None until then).
    """

    version: int
    inputs: Dict[str, int]
    rows: Any
    cold: Any = False
    degraded: Optional[str] = None
    fallbacks: Optional[Dict[str, int]] = None
    queued_at: Optional[float] = field(default=None, compare=False)
    queue_s: Optional[float] = field(default=None, compare=False)
    predict_s: Optional[float] = field(default=None, compare=False)

    @property
    def n(self) -> int:
        """Candidates."""
        return self.rows.n

    def key(self) -> tuple:
        """Jobs of one key can share a Predict: same version, inputs and embedding width."""
        return (self.version, tuple(sorted(self.inputs.items())), self.rows.width)

    def response(self, scores: List[float], answered: int) -> RankResponse:
        """The job's answer once its Predict returned ``scores`` from version ``answered``."""
        return RankResponse(scores, str(answered), self.cold, self.degraded, self.fallbacks)
