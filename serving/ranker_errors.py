"""Errors of the online ranker (:class:`serving.ranker.Ranker`).

The ranker service maps them to HTTP statuses (:mod:`serving.ranker_service`): a malformed
request (:class:`InvalidRequest`, 400, naming the field), a model server that cannot answer now
(:class:`ModelServerUnavailable`, 503) or answers with a contract error (:class:`ModelServerError`),
and an embedding lookup that failed instead of falling back to the cold-start default
(:class:`EmbeddingLookupError`).
"""
from __future__ import annotations

from typing import Optional


class RankerError(Exception):
    """Base of the ranker's errors."""


class InvalidRequest(RankerError):
    """The ranking request is malformed.

    Attributes:
        field: the offending field, e.g. ``"candidates[3].release_year"``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message if message.startswith(field) else f"{field}: {message}")
        self.field = field


class ModelServerError(RankerError):
    """The model server answered with an error that is not an outage (contract mismatch)."""


class ModelServerUnavailable(ModelServerError):
    """The model server is down, too slow, or does not serve the model now."""


class EmbeddingLookupError(RankerError):
    """The embedding lookup failed instead of falling back to the cold-start default.

    Attributes:
        model_version: the version whose embeddings were asked for, when known.
    """

    def __init__(self, message: str, model_version: Optional[str] = None) -> None:
        super().__init__(message)
        self.model_version = model_version



class _VersionGone(Exception):
    pass


class _WouldBlock(Exception):
    """An in-memory-only :meth:`serving.ranker.Ranker.prepare` needs a network or store call
    (stale served version, unknown signature, embedding not cached): prepare it on a worker."""
