"""Per-candidate meta embeddings of a multi-block model: ``[e_user, e_user×genre]`` for the ranker.

A model with the user × genre block (``meta_blocks = ("user", "user_x_genre")``) scores a
candidate with the concatenation ``[e_user, e_user×g]`` (width 2E), ``g`` the candidate's primary
genre bucket (:mod:`embeddings.entity_keys`). Per request, :func:`candidate_embeddings` reads in
**one** batched lookup the keys::

    user, user#g_1 .. user#g_k, __cold_start__#g_1 .. __cold_start__#g_k

(``g_1..g_k`` the distinct primary genres of the candidates) and applies the fallback chain:

* ``user#g`` missing (a genre outside the store's catalogue, a user written by an older MEG) →
  the user's ``e_user`` in the genre slot (counted ``genre_to_user``); for a model with
  ``genre_combine="residual"``, whose genre slot holds the adaptation's change, zeros instead
  (``genre_fallback="zero"``, :func:`served_genre_fallback`): the un-adapted slot;
* ``user`` missing (unknown user, or the store down/slow) → the cold-start rows:
  ``__cold_start__`` in the user slot and ``__cold_start__#g`` in the genre slot (counted
  ``user_to_cold``); a missing ``__cold_start__#g`` → the ``__cold_start__`` row there too
  (zeros with ``genre_fallback="zero"``; counted ``cold_genre_to_cold``).

The counts are per candidate. The primary genre of a raw candidate is computed as the Transform
does (:func:`trainer.preprocessing.multi_hot`: ``'|'``-split, empty tokens dropped,
``tf.strings.to_hash_bucket_fast``), then the lowest bucket (0 without genres); results are
cached per distinct genre string.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from embeddings import entity_keys
from schema import features as F

MULTI_BLOCKS = ("user", "user_x_genre")
FALLBACKS = ("genre_to_user", "user_to_cold", "cold_genre_to_cold")
"""Fallback counters (per candidate), see the module doc."""


def is_multi_block(meta_blocks: Sequence[str]) -> bool:
    """Whether ``meta_blocks`` (``ModelConfig.meta_blocks``) include the user × genre block.

    Raises:
        ValueError: blocks other than ``("user",)`` and ``("user", "user_x_genre")`` (named).
    """
    blocks = tuple(meta_blocks)
    if blocks not in (("user",), MULTI_BLOCKS):
        raise ValueError(f"meta_blocks {blocks!r}: the ranker serves ('user',) or {MULTI_BLOCKS!r}")
    return blocks == MULTI_BLOCKS


GENRE_FALLBACKS = ("user", "zero")
"""What fills a candidate's genre slot when its ``user#g`` row is missing (see the module doc)."""


def genre_fallback_of(genre_combine: str) -> str:
    """The genre slot's fallback for a model's ``ModelConfig.genre_combine``: ``"zero"`` for
    ``"residual"`` (the slot holds the adaptation's change; un-adapted it is 0), else ``"user"``."""
    return "zero" if genre_combine == "residual" else "user"


def _meta_block_info(model_dir: str) -> Dict[str, Any]:
    """``assets.extra/meta_block/meta_block.json`` of a model folder, local or remote (``gs://``:
    the EmbeddingJoin's model artifact on Kubeflow); {} when it has none."""
    import tensorflow as tf

    path = os.path.join(model_dir, "assets.extra", "meta_block", "meta_block.json")
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as fh:
        return json.load(fh)


def served_meta_blocks(version_dir: str) -> Tuple[str, ...]:
    """The meta blocks of a pushed version folder (its ``assets.extra/meta_block/meta_block.json``;
    ``("user",)`` when it has none, e.g. a baseline)."""
    info = _meta_block_info(version_dir)
    blocks = info.get("meta_blocks") or info.get("limaml_config", {}).get("model", {}).get(
        "meta_blocks", ["user"])
    return tuple(blocks)


def served_genre_fallback(version_dir: str) -> str:
    """:func:`genre_fallback_of` the ``genre_combine`` of a model folder's ``meta_block.json``
    (``"user"`` when it has none)."""
    model = _meta_block_info(version_dir).get("limaml_config", {}).get("model", {})
    return genre_fallback_of(model.get("genre_combine", "concat"))


def check_genre_fallback(genre_fallback: str) -> str:
    """Returns ``genre_fallback``; raises ValueError naming it unless in :data:`GENRE_FALLBACKS`."""
    if genre_fallback not in GENRE_FALLBACKS:
        raise ValueError(f"genre_fallback {genre_fallback!r} must be one of {GENRE_FALLBACKS}")
    return genre_fallback


class PrimaryGenres:
    """Raw ``genres`` strings -> primary genre buckets, as the Transform hashes them, cached.

    Args:
        buckets: genre hash buckets (the schema's, 64).
        max_entries: most distinct genre strings cached (the cache is cleared when full).
    """

    def __init__(self, buckets: Optional[int] = None, max_entries: int = 100_000) -> None:
        self.buckets = int(buckets or F.encoding(F.GENRES).buckets)
        self.max_entries = int(max_entries)
        self._cache: Dict[bytes, int] = {}
        self._lock = threading.Lock()

    def _compute(self, values: Sequence[bytes]) -> np.ndarray:
        import tensorflow as tf

        tokens = tf.strings.split(tf.constant(list(values), tf.string), sep=F.GENRE_SEPARATOR)
        tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
        ids = tf.strings.to_hash_bucket_fast(tokens, self.buckets)
        lowest = tf.reduce_min(ids, axis=1)  # rows without a token: int64 max
        return np.where(tokens.row_lengths().numpy() > 0, lowest.numpy(), 0).astype(np.int64)

    def __call__(self, genres: Sequence[Any]) -> np.ndarray:
        """Primary genre buckets ``[n]`` int64 of raw ``'|'``-joined genre strings ``[n]``
        (str, bytes or None; None and ``""`` give 0, as in training)."""
        raw = [b"" if g is None else g.encode("utf-8") if isinstance(g, str) else bytes(g)
               for g in genres]
        cache = self._cache
        new = sorted({g for g in raw if g not in cache})
        if new:
            found = dict(zip(new, self._compute(new).tolist()))
            with self._lock:
                if len(cache) + len(found) > self.max_entries:
                    cache.clear()
                cache.update(found)
            lookup = {**cache, **found}
        else:
            lookup = cache
        return np.fromiter((lookup[g] for g in raw), dtype=np.int64, count=len(raw))


@dataclasses.dataclass(frozen=True)
class CandidateEmbeddings:
    """What :func:`candidate_embeddings` returns.

    Attributes:
        embeddings: float32 ``[n, 2E]``, ``[e_user, e_user×g(c)]`` per candidate c.
        cold: the user had no row (cold-start rows used).
        degraded: the lookup's degradation reason, or None.
        fallbacks: ``{name: candidates}`` for each of :data:`FALLBACKS`.
    """

    embeddings: np.ndarray
    cold: bool
    degraded: Optional[str]
    fallbacks: Dict[str, int]


def lookup_keys(user_id: str, genres: np.ndarray) -> np.ndarray:
    """The keys of one request: ``[user, user#g.., __cold_start__#g..]`` for distinct ``genres``."""
    cold = [entity_keys.cold_genre_key(g) for g in genres]
    return np.concatenate([np.array([user_id], dtype=object),
                           entity_keys.genre_keys([user_id], genres),
                           np.array(cold, dtype=object)])


def assemble(rows: Mapping[str, np.ndarray], user_id: str, genres: np.ndarray,
             cold_fallback: np.ndarray, genre_fallback: str = "user"
             ) -> Tuple[np.ndarray, bool, Dict[str, int]]:
    """The fallback chain on the rows found: ``[e_user, e_user×g]`` per candidate.

    One definition for the ranker (:func:`candidate_embeddings`) and for any offline join of
    evaluation rows with a multi-block store (key the store's rows by
    :func:`embeddings.entity_keys.owner_users`, add the cold-start rows, call this per user).

    Args:
        rows: ``{key: [E]}`` the found rows among ``user``, ``user#g``, ``__cold_start__#g``
            (others ignored; a key absent means no row).
        user_id: the user.
        genres: ``[n]`` int primary genres of the candidates.
        cold_fallback: ``[E]`` the cold-start row ``__cold_start__`` (or the configured
            fallback), used when the user has no row.
        genre_fallback: a missing genre row's slot: ``"user"`` (the user's row, or the
            cold-start row) or ``"zero"`` (``genre_combine="residual"`` models).

    Returns:
        ``(embeddings float32 [n, 2E], user missing, fallbacks {name: candidates})``.
    """
    check_genre_fallback(genre_fallback)
    genres = np.asarray(genres, np.int64).reshape(-1)
    uniq, inverse = np.unique(genres, return_inverse=True)
    n = genres.shape[0]
    counts = dict.fromkeys(FALLBACKS, 0)
    user = rows.get(user_id)
    cold = user is None
    if cold:
        e_user = np.asarray(cold_fallback, np.float32)
        keys = [entity_keys.cold_genre_key(g) for g in uniq]
    else:
        e_user = np.asarray(user, np.float32)
        keys = list(entity_keys.genre_keys([user_id], uniq))
    slot_missing = np.array([k not in rows for k in keys], bool)
    empty = e_user if genre_fallback == "user" else np.zeros_like(e_user)
    slot = np.stack([empty if m else np.asarray(rows[k], np.float32)
                     for k, m in zip(keys, slot_missing)]) if keys else np.zeros((0, e_user.shape[0]),
                                                                                  np.float32)
    fell = int(slot_missing[inverse].sum())  # candidates whose genre slot has no row
    if cold:
        counts["user_to_cold"], counts["cold_genre_to_cold"] = n, fell
    else:
        counts["genre_to_user"] = fell
    out = np.concatenate([np.broadcast_to(e_user, (n, e_user.shape[0])), slot[inverse]], axis=1)
    return np.ascontiguousarray(out, np.float32), cold, counts


def candidate_embeddings(lookup: Any, user_id: str, genres: np.ndarray, model_version: str,
                         genre_fallback: str = "user") -> CandidateEmbeddings:
    """``[e_user, e_user×genre]`` of every candidate, from one batched lookup.

    Args:
        lookup: ``lookup(keys, model_version)`` -> ``embeddings [N, E]`` and ``cold [N]`` (True:
            the key has no row, and ``embeddings`` holds the cold-start row there;
            :class:`serving.embedding_lookup.EmbeddingLookup`).
        user_id: the user (without :data:`entity_keys.SEPARATOR`).
        genres: ``[n]`` int primary genre buckets of the candidates.
        model_version: the served version.
        genre_fallback: see :func:`assemble`.

    Returns:
        :class:`CandidateEmbeddings`.

    Raises:
        ValueError: a malformed lookup result (named shapes).
    """
    genres = np.asarray(genres, np.int64).reshape(-1)
    keys = lookup_keys(user_id, np.unique(genres))
    res = lookup.lookup(keys, model_version)
    emb = np.asarray(res.embeddings, np.float32)
    missing = np.asarray(res.cold, bool)
    if emb.ndim != 2 or emb.shape[0] != len(keys) or missing.shape != (len(keys),):
        raise ValueError(f"lookup returned embeddings {emb.shape} and cold {missing.shape} for "
                         f"{len(keys)} keys")
    found = {k: emb[i] for i, k in enumerate(keys) if not missing[i]}
    out, cold, counts = assemble(found, user_id, genres, emb[0], genre_fallback)
    return CandidateEmbeddings(out, cold, getattr(res, "degraded", None), counts)


__all__ = ["CandidateEmbeddings", "FALLBACKS", "GENRE_FALLBACKS", "MULTI_BLOCKS", "PrimaryGenres",
           "assemble", "candidate_embeddings", "check_genre_fallback", "genre_fallback_of",
           "is_multi_block", "lookup_keys", "served_genre_fallback", "served_meta_blocks"]
