"""The user's meta embedding(s) for one ranking request, at the served model version.

* Single block: one lookup of the user (:meth:`EmbeddingsMixin._embedding`); unknown users or a
  down/slow store give the cold-start default and a reason (``cold``, ``degraded``).
* Multi-block (:mod:`serving.multi_block`): per candidate the 2E-wide ``[e_user, e_user×genre]``
  of its primary genre, from one batched lookup with the fallback chain user × genre -> user ->
  cold-start rows (:meth:`EmbeddingsMixin._candidate_embeddings`); fallbacks are counted.

A lookup that raises or returns a malformed or non-finite result is an
:class:`~serving.ranker_errors.EmbeddingLookupError`. :class:`EmbeddingsMixin` is one part of
:class:`serving.ranker.Ranker`.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Optional

import numpy as np

from embeddings.entity_keys import SEPARATOR as ENTITY_SEPARATOR
from schema import features as F
from serving import multi_block as MB
from serving.ranker_errors import EmbeddingLookupError, InvalidRequest, _WouldBlock


def _lookup_failure(user_id: str, version: int, exc: Exception) -> EmbeddingLookupError:
    """Any failure of a user's embedding lookup, as the one error type the ranker maps."""
    return EmbeddingLookupError(
        f"embedding lookup for user {user_id!r} at model version {version} failed: "
        f"{type(exc).__name__}: {exc}", str(version))


class EmbeddingsMixin:
    """Looks up the meta embedding(s) a request is scored with."""

    _lookup: Any
    _genres: Optional[MB.PrimaryGenres]
    fallback_counts: Dict[str, int]
    _fallback_lock: threading.Lock

    def _embedding(self, user_id: str, version: int, cached_only: bool = False):
        """``(embedding [E], cold, degraded)``; ``cached_only``: from the lookup's cache
        (``lookup_cached``) or ``_WouldBlock``."""
        one = getattr(self._lookup, "peek", None) if cached_only else None
        if one is not None:  # one user, no arrays (EmbeddingLookup.peek)
            try:
                got = one(user_id, str(version))
            except Exception as exc:  # noqa: BLE001 - as for the other lookups below
                raise _lookup_failure(user_id, version, exc) from exc
            if got is None:
                raise _WouldBlock(f"user {user_id!r} is not in the lookup's cache")
            return self._checked_one(user_id, got[0], got[1])
        try:
            if cached_only:
                peek = getattr(self._lookup, "lookup_cached", None)
                res = peek([user_id], str(version)) if peek is not None else None
                if res is None:
                    raise _WouldBlock(f"user {user_id!r} is not in the lookup's cache")
            else:
                res = self._lookup.lookup([user_id], str(version))
        except _WouldBlock:
            raise
        except Exception as exc:  # noqa: BLE001 - report any lookup failure as one error type
            raise _lookup_failure(user_id, version, exc) from exc
        emb = np.asarray(getattr(res, "embeddings", None), dtype=np.float32)
        cold = np.asarray(getattr(res, "cold", None))
        if emb.ndim != 2 or emb.shape[0] != 1 or emb.shape[1] < 1 or cold.shape != (1,):
            raise EmbeddingLookupError(
                f"embedding lookup returned embeddings of shape {emb.shape} and cold of shape "
                f"{cold.shape} for 1 user; expected [1, E] and [1]"
            )
        row, is_cold, _ = self._checked_one(user_id, emb[0], cold[0])
        return row, is_cold, getattr(res, "degraded", None)

    @staticmethod
    def _checked_one(user_id: str, emb: np.ndarray, cold: bool):
        """``(embedding [E], cold, None)`` of a cached user, checked as a lookup's answer is."""
        if emb.ndim != 1 or emb.shape[0] < 1:
            raise EmbeddingLookupError(f"embedding lookup returned an embedding of shape "
                                       f"{emb.shape} for user {user_id!r}; expected [E]")
        if not np.isfinite(emb).all():
            raise EmbeddingLookupError(
                f"embedding lookup returned a non-finite embedding for user {user_id!r}")
        return emb, bool(cold), None

    def _candidate_embeddings(self, version: int, user_id: str, columns: Dict[str, list], n: int):
        """Multi-block: ``([n, 2E], cold, degraded, fallbacks)`` from one batched lookup."""
        if ENTITY_SEPARATOR in user_id:
            raise InvalidRequest("user_id", f"{user_id!r} contains "
                                 f"{ENTITY_SEPARATOR!r}, the separator of user × genre "
                                 "keys; such ids are not served by a multi-block model")
        col = columns.get(F.GENRES)
        genres = self._genres([None] * n if col is None else col)
        try:
            res = MB.candidate_embeddings(self._lookup, user_id, genres, str(version),
                                          self.genre_fallback)
        except Exception as exc:  # noqa: BLE001 - report any lookup failure as one error type
            raise EmbeddingLookupError(
                f"embedding lookup for user {user_id!r} at model version {version} failed: "
                f"{type(exc).__name__}: {exc}", str(version)) from exc
        if not np.all(np.isfinite(res.embeddings)):
            raise EmbeddingLookupError(
                f"embedding lookup returned a non-finite embedding for user {user_id!r}")
        with self._fallback_lock:
            for name, count in res.fallbacks.items():
                self.fallback_counts[name] += count
        return res.embeddings, res.cold, res.degraded, res.fallbacks
