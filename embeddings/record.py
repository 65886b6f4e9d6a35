"""The meta-embedding record (DESIGN.md section 3), held columnar as :class:`EmbeddingBatch`.

One record per user and model version:

| field | type | meaning |
|---|---|---|
| ``user_id`` | str | task key |
| ``embedding`` | float32[E] | e_u, the meta embedding |
| ``model_version`` | str | version of the model whose meta block produced it |
| ``generated_at`` | int64 | unix seconds of the MEG run |
| ``support_size`` | int64 | interactions the meta block adapted on (0 for cold start) |
| ``last_interaction_ts`` | int64 | unix seconds of the user's newest interaction used (0 if none) |

The reserved user :data:`COLD_START_USER` carries, per version, the un-adapted meta block output:
the embedding served to users without a record of their own.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

COLD_START_USER = "__cold_start__"
"""Reserved user id whose embedding is the un-adapted meta block output (cold-start default)."""

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")

ArrayLike = Union[np.ndarray, Sequence[Any]]


def validate_model_version(model_version: Any) -> str:
    """Checks a model version string and returns it.

    A version is used as a Parquet directory name (``model_version=<v>``) and as a Bigtable
    column qualifier, so it is restricted to ``[A-Za-z0-9._-]``, 1..128 characters, starting with
    a letter or digit.

    Raises:
        ValueError: the version is not a string of that form (the message names it).
    """
    if not isinstance(model_version, str) or not _VERSION_RE.match(model_version):
        raise ValueError(
            f"model_version {model_version!r} is invalid: use 1-128 characters from "
            "[A-Za-z0-9._-] starting with a letter or digit (e.g. '1700000000' or 'v3')")
    return model_version


def as_user_id_array(user_ids: Union[ArrayLike, Iterable[str]]) -> np.ndarray:
    """Converts user ids to a 1-D numpy object array of ``str``.

    Raises:
        TypeError: an id is not a ``str`` (the message names the first one).
        ValueError: the ids are not 1-D.
    """
    if isinstance(user_ids, np.ndarray) and user_ids.dtype == object:
        arr = user_ids
    else:
        arr = np.asarray(list(user_ids) if not isinstance(user_ids, np.ndarray) else user_ids,
                         dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"user_ids must be 1-D, got shape {arr.shape}")
    if arr.size:
        is_str = np.frompyfunc(lambda u: isinstance(u, str), 1, 1)(arr).astype(bool)
        if not is_str.all():
            bad = arr[~is_str][0]
            raise TypeError(
                f"user ids must be str; got {bad!r} of type {type(bad).__name__} "
                "(convert ids with str() before building the batch)")
    return arr


@dataclasses.dataclass(frozen=True)
class EmbeddingBatch:
    """Meta embeddings of N users for one model version, columnar.

    Attributes:
        user_ids: object array [N] of ``str``, unique within the batch.
        embeddings: float32 [N, E], finite.
        support_size: int64 [N], >= 0.
        last_interaction_ts: int64 [N], unix seconds (0 when unknown).
        model_version: version tag (see :func:`validate_model_version`).
        generated_at: int64 unix seconds of the MEG run that produced the batch.

    Construct with :meth:`create` to get dtype conversion; the constructor validates either way.

    Raises:
        ValueError: shapes disagree, duplicate user ids, non-finite embeddings (the message names
            the user), negative support sizes, invalid model version.
        TypeError: a user id is not a ``str``.
    """

    user_ids: np.ndarray
    embeddings: np.ndarray
    support_size: np.ndarray
    last_interaction_ts: np.ndarray
    model_version: str
    generated_at: int

    def __post_init__(self) -> None:
        uid = as_user_id_array(self.user_ids)
        emb = np.asarray(self.embeddings)
        if emb.ndim != 2:
            raise ValueError(
                f"embeddings must be 2-D [N, E], got shape {emb.shape}; reshape a single vector "
                "with emb[None, :]")
        if emb.shape[0] != uid.shape[0]:
            raise ValueError(
                f"embeddings has {emb.shape[0]} rows but user_ids has {uid.shape[0]} entries")
        if emb.shape[1] < 1:
            raise ValueError(f"embedding dimension must be >= 1, got shape {emb.shape}")
        if emb.dtype != np.float32:
            if not np.issubdtype(emb.dtype, np.floating):
                raise ValueError(f"embeddings must be floating point, got dtype {emb.dtype}")
            emb = emb.astype(np.float32)
        emb = np.ascontiguousarray(emb)
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            names = ", ".join(repr(u) for u in uid[bad[:5]])
            raise ValueError(
                f"non-finite (NaN/Inf) embeddings for {bad.size} user(s): {names}"
                f"{' ...' if bad.size > 5 else ''}; fix meta-embedding generation for them "
                "(e.g. a diverging inner loop) or drop them so they get the cold-start default")
        cols = {}
        for name in ("support_size", "last_interaction_ts"):
            col = np.asarray(getattr(self, name))
            if col.shape != uid.shape:
                raise ValueError(
                    f"{name} must have shape {uid.shape} like user_ids, got {col.shape}")
            if col.size and not np.issubdtype(col.dtype, np.integer):
                raise ValueError(f"{name} must be integers, got dtype {col.dtype}")
            cols[name] = np.ascontiguousarray(col, dtype=np.int64)
        if cols["support_size"].size and cols["support_size"].min() < 0:
            i = int(np.argmin(cols["support_size"]))
            raise ValueError(
                f"support_size must be >= 0; user {uid[i]!r} has {cols['support_size'][i]}")
        if uid.size:
            uniq, counts = np.unique(uid.astype(str), return_counts=True)
            if (counts > 1).any():
                dup = uniq[counts > 1]
                raise ValueError(
                    f"duplicate user ids in batch: {', '.join(repr(str(u)) for u in dup[:5])}"
                    f"{' ...' if dup.size > 5 else ''}; emit one record per user and version")
        validate_model_version(self.model_version)
        try:
            gen = int(self.generated_at)
        except (TypeError, ValueError):
            raise ValueError(
                f"generated_at must be int unix seconds, got {self.generated_at!r}") from None
        object.__setattr__(self, "user_ids", uid)
        object.__setattr__(self, "embeddings", emb)
        object.__setattr__(self, "support_size", cols["support_size"])
        object.__setattr__(self, "last_interaction_ts", cols["last_interaction_ts"])
        object.__setattr__(self, "generated_at", gen)

    @classmethod
    def create(cls, user_ids: ArrayLike, embeddings: ArrayLike, model_version: str,
               generated_at: int, support_size: Optional[ArrayLike] = None,
               last_interaction_ts: Optional[ArrayLike] = None) -> "EmbeddingBatch":
        """Builds a validated batch; missing ``support_size``/``last_interaction_ts`` are zeros.

        Args:
            user_ids: [N] str.
            embeddings: [N, E] floats (converted to float32).
            model_version: version tag.
            generated_at: unix seconds.
            support_size: [N] ints or None.
            last_interaction_ts: [N] ints or None.
        """
        uid = as_user_id_array(user_ids)
        n = uid.shape[0]
        zeros = np.zeros(n, dtype=np.int64)
        return cls(
            user_ids=uid,
            embeddings=np.asarray(embeddings, dtype=np.float32),
            support_size=zeros if support_size is None else np.asarray(support_size),
            last_interaction_ts=zeros.copy() if last_interaction_ts is None
            else np.asarray(last_interaction_ts),
            model_version=model_version,
            generated_at=generated_at,
        )

    @classmethod
    def cold_start(cls, embedding: ArrayLike, model_version: str,
                   generated_at: int) -> "EmbeddingBatch":
        """A one-row batch holding the cold-start default (user :data:`COLD_START_USER`).

        Args:
            embedding: [E], the un-adapted meta block output.
        """
        vec = np.asarray(embedding, dtype=np.float32)
        if vec.ndim != 1:
            raise ValueError(f"cold-start embedding must be 1-D [E], got shape {vec.shape}")
        return cls.create([COLD_START_USER], vec[None, :], model_version, generated_at)

    @property
    def num_users(self) -> int:
        """N (the cold-start row counts as a row)."""
        return int(self.user_ids.shape[0])

    @property
    def embedding_dim(self) -> int:
        """E."""
        return int(self.embeddings.shape[1])

    def has_cold_start(self) -> bool:
        """Whether the batch contains the :data:`COLD_START_USER` row."""
        return bool((self.user_ids == COLD_START_USER).any())

    def slice(self, start: int, stop: int) -> "EmbeddingBatch":
        """Rows ``[start, stop)`` as a new batch (views, no copy of the embeddings)."""
        return dataclasses.replace(
            self,
            user_ids=self.user_ids[start:stop],
            embeddings=self.embeddings[start:stop],
            support_size=self.support_size[start:stop],
            last_interaction_ts=self.last_interaction_ts[start:stop],
        )


def batches_of(batches: Union[EmbeddingBatch, Iterable[EmbeddingBatch]]
               ) -> Iterable[EmbeddingBatch]:
    """Accepts one batch or an iterable of batches; yields batches (type-checked)."""
    if isinstance(batches, EmbeddingBatch):
        yield batches
        return
    for b in batches:
        if not isinstance(b, EmbeddingBatch):
            raise TypeError(f"expected EmbeddingBatch, got {type(b).__name__}")
        yield b


class VersionNotCommittedError(LookupError):
    """The requested model version was never committed (or was retired) in the store."""


@dataclasses.dataclass(frozen=True)
class StoreLookup:
    """What a store returns for a batched lookup.

    Attributes:
        embeddings: float32 [N, E]; rows where ``found`` is False are zeros.
        found: bool [N].
    """

    embeddings: np.ndarray
    found: np.ndarray


class StreamCheck:
    """Checks a stream of batches written as one version: same version and size, users unique.

    Used by every store's ``write`` before anything of a batch is written.

    Args:
        first: the stream's first batch (sets the version and the embedding size).
    """

    def __init__(self, first: "EmbeddingBatch") -> None:
        self.version, self.dim = first.model_version, first.embedding_dim
        self.seen: set = set()
        self.has_cold = False

    def check(self, batch: "EmbeddingBatch") -> None:
        """Raises ValueError naming the problem; records the batch's users otherwise."""
        if batch.model_version != self.version:
            raise ValueError(
                f"mixed model versions in one write: {self.version!r} then "
                f"{batch.model_version!r}; write each version separately")
        if batch.embedding_dim != self.dim:
            raise ValueError(
                f"embedding size changed within version {self.version!r}: {self.dim} then "
                f"{batch.embedding_dim}")
        if not self.seen.isdisjoint(batch.user_ids):
            dup = sorted(self.seen.intersection(batch.user_ids))[:5]
            raise ValueError(
                f"user(s) {dup} appear in more than one batch of version {self.version!r}; "
                "emit one record per user")
        self.seen.update(batch.user_ids)
        self.has_cold = self.has_cold or batch.has_cold_start()
