"""Entity keys of the meta-embedding stores: users and user × primary genre.

A snapshot (one model version) of a single-block model holds one row per user, keyed by the user
id, plus the reserved cold-start row :data:`embeddings.record.COLD_START_USER`. A snapshot of a
multi-block model (``ModelConfig.meta_blocks == ("user", "user_x_genre")``) also holds one row per
user and genre of the catalogue's primary-genre set, and one cold-start row per genre::

    "<user_id>"               e_user            the user block's meta embedding      [E]
    "<user_id>#<g>"           e_user×genre      the genre block's, adapted on g      [E]
    "__cold_start__"          cold              mean un-adapted user block output    [E]
    "__cold_start__#<g>"      cold#g            mean un-adapted genre block output   [E]

``g`` is the item's *primary genre bucket* written in decimal (e.g. ``"u42#17"``): the lowest
genre hash bucket the item carries, :func:`trainer.model.primary_genre` of the multi-hot that
:func:`trainer.preprocessing.multi_hot` builds (``tf.strings.to_hash_bucket_fast(token, 64)``
of each ``'|'``-separated genre name), ``0`` for an item without genres. The bucket, not the
genre name, is the entity (two names hashed to one bucket are one entity, as in training), so
the key is stable for as long as the hash and the bucket count are.

User ids of a multi-block store must not contain :data:`SEPARATOR` (``"u#3"`` would be the genre
row of user ``u``): :func:`check_user_ids` rejects them, naming the id.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence, Union

import numpy as np

from embeddings.record import COLD_START_USER, EmbeddingBatch

SEPARATOR = "#"

ArrayLike = Union[np.ndarray, Sequence]


def genre_key(user_id: str, genre: int) -> str:
    """The key of one (user, primary genre) entity, ``"<user_id>#<g>"``."""
    return f"{user_id}{SEPARATOR}{int(genre)}"


def cold_genre_key(genre: int) -> str:
    """The cold-start row of genre ``g``, ``"__cold_start__#<g>"``."""
    return genre_key(COLD_START_USER, genre)


def genre_keys(user_ids: ArrayLike, genres: ArrayLike) -> np.ndarray:
    """Keys of every (user, genre) pair, user-major.

    Args:
        user_ids: ``[U]`` str.
        genres: ``[K]`` int genre buckets.

    Returns:
        object str ``[U·K]``; entry ``u·K + k`` is ``"<user_ids[u]>#<genres[k]>"``.
    """
    users = np.asarray(user_ids, dtype=object).astype(str)
    suffix = np.array([f"{SEPARATOR}{int(g)}" for g in np.asarray(genres).reshape(-1)], dtype=str)
    if users.size == 0 or suffix.size == 0:
        return np.zeros(0, dtype=object)
    return np.char.add(np.repeat(users, suffix.size), np.tile(suffix, users.size)).astype(object)


def check_user_ids(user_ids: ArrayLike) -> None:
    """Raises ValueError naming the first user id that holds :data:`SEPARATOR`.

    Such an id would share its key with another user's genre row in a multi-block store.
    """
    ids = np.asarray(user_ids, dtype=object).astype(str)
    if ids.size == 0:
        return
    bad = np.flatnonzero(np.char.find(ids, SEPARATOR) >= 0)
    if bad.size:
        raise ValueError(
            f"user id {ids[bad[0]]!r} contains {SEPARATOR!r}, the separator of user × genre keys "
            f"('<user_id>{SEPARATOR}<genre bucket>'); a multi-block model cannot store it (rename "
            f"the user, e.g. replace {SEPARATOR!r}){f' ({bad.size} such ids)' if bad.size > 1 else ''}")


def owner_users(keys: ArrayLike) -> np.ndarray:
    """The user of each key (``"u#3"`` -> ``"u"``, ``"u"`` -> ``"u"``), object str ``[N]``."""
    arr = np.asarray(keys, dtype=object).astype(str)
    if arr.size == 0:
        return np.zeros(0, dtype=object)
    return np.char.partition(arr, SEPARATOR)[:, 0].astype(object)


def is_genre_key(keys: ArrayLike) -> np.ndarray:
    """bool ``[N]``: the key is a user × genre (or cold-start × genre) row."""
    arr = np.asarray(keys, dtype=object).astype(str)
    if arr.size == 0:
        return np.zeros(0, dtype=bool)
    return np.char.find(arr, SEPARATOR) >= 0


class UserRowCount:
    """Counts the user rows (not ``user#g`` nor cold-start rows) of a stream of batches."""

    def __init__(self) -> None:
        self.users = 0

    def through(self, batches: Iterable[EmbeddingBatch]) -> Iterator[EmbeddingBatch]:
        """Yields ``batches`` unchanged, counting their user rows."""
        for batch in batches:
            ids = batch.user_ids
            self.users += int(np.sum(~is_genre_key(ids) & (ids != COLD_START_USER)))
            yield batch


__all__ = ["UserRowCount", "SEPARATOR", "check_user_ids", "cold_genre_key", "genre_key", "genre_keys",
           "is_genre_key", "owner_users"]
