"""Vectorised builder of padded MAML tasks from a per-interaction encoded table.

Input: a dict of equal-length arrays (one row per interaction) sorted by user, then time, with a
user key array. For a user with ``n`` interactions (positions ``0..n-1`` in time order), tasks
are cut at split points ``p``: support = the (up to ``S``) interactions just before ``p``, query
= the (up to ``Q``) interactions from ``p`` on. The first split is

    p_0 = clip(min(S, floor(n·S/(S+Q))), min_support, n − min_query)

(or ``p_0 = min_support`` with ``TaskConfig.first_split = "min_support"``)
and later ones are ``p_j = p_0 + j·Q`` (non-overlapping queries) while ``n − p_j >= min_query``;
a user keeps the latest ``max_tasks_per_user`` of them. Users with ``n < min_support + min_query``
give no task. No Python loop over users: everything is numpy index arithmetic.

Task entities (``TaskConfig.entity``). ``"user"``: the rows of one user form one history.
``"user_x_genre"``: the rows of one user *and* one primary genre ``g`` (the item's genre
multi-hot through :func:`trainer.model.primary_genre`, the rule the genre block uses) form one
history, keyed ``"<user_id>#<g>"`` (the key of that entity's row in the embedding stores,
:mod:`embeddings.entity_keys`); the rows keep the user's time order, and the split rule above
runs on that sub-history (positions count the entity's rows, not the user's). Only the rows of
``table`` enter, so a protocol's query rows, which are not in the trainable table, never do.

How these entity tasks relate to the genre block's subtasks (:mod:`trainer.genre_block`): the
genre block works *inside user tasks*; for a user task cut at user position P (support = the
user's S rows before P) and a query row of genre g, the subtask (u, g) has as support the user's
support rows of genre g, i.e. the genre-g rows among the user's last S rows before P. A
``user_x_genre`` task cut at entity position p has as support the last S genre-g rows before the
entity's p-th row, and its queries are genre-g rows only. The two supports coincide when the
user's rows before P fit in S (then both are all of u's genre-g rows before the query); otherwise
the entity task's support reaches further back (S rows of genre g, not of the user). Entity
tasks suit a model whose only meta block is adapted per entity (MEG keyed by entity); the genre
block's subtasks suit the two-block model, whose user embedding and user × genre embedding are
adapted on the same user task.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from embeddings.entity_keys import SEPARATOR
from limaml.config import TaskConfig
from schema import features
from trainer.layout import MASK, QUERY, SUPPORT


def _groups(keys: np.ndarray):
    """Start offset and length of each run of equal keys (keys sorted/grouped)."""
    n = keys.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.ones(n, bool)
    change[1:] = keys[1:] != keys[:-1]
    starts = np.flatnonzero(change).astype(np.int64)
    counts = np.diff(np.append(starts, n)).astype(np.int64)
    return starts, counts


def _gather(arrays: Mapping[str, np.ndarray], idx: np.ndarray, mask: np.ndarray
            ) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        vals = arr[idx]
        m = mask.reshape(mask.shape + (1,) * (vals.ndim - mask.ndim))
        if vals.dtype == object:
            vals = np.where(m, vals, "")
        else:
            vals = np.where(m, vals, np.zeros((), vals.dtype))
        out[name] = vals
    out[MASK] = mask.astype(np.float32)
    return out


def primary_genres(genres: np.ndarray) -> np.ndarray:
    """Primary genre bucket ``[N]`` (int64) of genre multi-hots ``[N, G]``, by the model's rule
    (:func:`trainer.model.primary_genre`, one definition for tasks, genre block and MEG)."""
    from trainer.model import primary_genre  # TensorFlow, only for entity tasks

    genres = np.asarray(genres, dtype=np.float32)
    if genres.ndim != 2:
        raise ValueError(f"genres must be a [rows, buckets] multi-hot, got shape {genres.shape}")
    if genres.shape[0] == 0:
        return np.zeros(0, np.int64)
    return np.asarray(primary_genre(genres)).astype(np.int64)


def entity_keys(table: Mapping[str, np.ndarray], user_key: str, entity: str = "user"
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The task key of every row and, for a ``user_x_<feature>`` entity, the feature value.

    Args:
        table: ``{column: [N, ...]}`` rows; ``user_x_genre`` needs the genres multi-hot column.
        user_key: the user key column.
        entity: a :attr:`limaml.config.TaskConfig.ENTITIES` value.

    Returns:
        ``(keys [N] object, values [N] int64 or None)``: ``"user"`` gives the user keys and None;
        ``"user_x_genre"`` gives ``"<user>#<primary genre bucket>"`` and the buckets.

    Raises:
        ValueError: an unknown entity. KeyError: the table lacks the entity's column.
    """
    users = np.asarray(table[user_key])
    if entity == "user":
        return users, None
    if entity != "user_x_genre":
        raise ValueError(f"entity {entity!r} is not one of {list(TaskConfig.ENTITIES)}")
    if features.GENRES not in table:
        raise KeyError(f"entity {entity!r} needs column {features.GENRES!r}; table has {sorted(table)}")
    values = primary_genres(table[features.GENRES])
    keys = np.char.add(np.char.add(users.astype(str), SEPARATOR), values.astype(str))
    return keys.astype(object), values


def _by_entity(table: Mapping[str, np.ndarray], user_key: str, entity: str
               ) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """``(row order grouping each entity's rows, entity key per row in that order)``.

    Entities follow their user's position in ``table`` and then the feature value; within an
    entity the rows keep their order in ``table`` (the user's time order): a stable sort. The
    order is None for ``user`` (the table's own order).
    """
    keys, values = entity_keys(table, user_key, entity)
    if values is None:
        return None, keys
    starts, counts = _groups(np.asarray(table[user_key]))
    user_run = np.repeat(np.arange(starts.size), counts)
    order = np.lexsort((values, user_run))  # stable: equal (user, value) keep their order
    return order, keys[order]


def build_tasks(table: Mapping[str, np.ndarray], user_key: str, task_cfg: TaskConfig,
                feature_keys: Optional[list] = None) -> Dict[str, object]:
    """Builds padded support/query tasks for every entity (user, or user × genre) of ``table``.

    Args:
        table: ``{column: [N, ...]}`` encoded interactions sorted by ``user_key`` then time.
        user_key: column holding the user key (ids or hashes; rows of a user must be contiguous).
        task_cfg: support_size S, query_size Q, min_support, min_query, max_tasks_per_user,
            entity (``user_x_genre`` reads the genres multi-hot column).
        feature_keys: columns to put into support/query (default: every column but ``user_key``).

    Returns:
        ``{"support": {col: [T, S, ...], "mask": [T, S]}, "query": {col: [T, Q, ...], "mask": [T, Q]},
        "user": [T] user keys, "entity": [T] task keys (the user key for ``user``,
        ``"<user>#<genre>"`` for ``user_x_genre``), "split": [T] split position p within the
        entity's history}``. Padded positions (mask 0) hold zeros (``""`` for object columns).
        ``max_tasks_per_user`` caps the tasks of each entity.
    """
    S, Q = task_cfg.support_size, task_cfg.query_size
    order, keys = _by_entity(table, user_key, getattr(task_cfg, "entity", "user"))
    users = np.asarray(table[user_key])
    users = users if order is None else users[order]
    if feature_keys is None:
        feature_keys = [k for k in table if k != user_key]
    arrays = {k: np.asarray(table[k]) for k in feature_keys}
    starts, counts = _groups(keys)
    min_s, min_q = max(task_cfg.min_support, 0), max(task_cfg.min_query, 1)
    if getattr(task_cfg, "first_split", "proportional") == "min_support":
        p0 = np.full_like(counts, min_s)
    else:
        p0 = np.minimum(S, (counts * S) // (S + Q))
    p0 = np.clip(p0, min_s, np.maximum(counts - min_q, min_s))
    ok = (counts >= min_s + min_q) & (p0 >= max(min_s, 0)) & (counts - p0 >= min_q)
    possible = np.where(ok, (counts - min_q - p0) // Q + 1, 0)
    ntasks = np.minimum(possible, task_cfg.max_tasks_per_user)
    skip = possible - ntasks  # keep the latest tasks
    total = int(ntasks.sum())
    owner = np.repeat(np.arange(starts.size), ntasks)
    first = np.cumsum(ntasks) - ntasks
    j = np.arange(total) - np.repeat(first, ntasks) + skip[owner]
    p = p0[owner] + j * Q
    start, n = starts[owner], counts[owner]
    lo = np.maximum(p - S, 0)
    s_len = p - lo
    s_mask = np.arange(S)[None, :] < s_len[:, None]
    s_idx = np.where(s_mask, start[:, None] + lo[:, None] + np.arange(S)[None, :], 0)
    q_len = np.minimum(n - p, Q)
    q_mask = np.arange(Q)[None, :] < q_len[:, None]
    q_idx = np.where(q_mask, start[:, None] + p[:, None] + np.arange(Q)[None, :], 0)
    if order is not None:  # positions in entity order -> rows of ``table`` (no column copied)
        s_idx, q_idx = order[s_idx], order[q_idx]
    return {
        SUPPORT: _gather(arrays, s_idx, s_mask),
        QUERY: _gather(arrays, q_idx, q_mask),
        "user": users[starts[owner]] if total else users[:0],
        "entity": keys[starts[owner]] if total else keys[:0],
        "split": p.astype(np.int64),
    }


def build_support_sets(table: Mapping[str, np.ndarray], user_key: str, max_recent: int,
                       feature_keys: Optional[list] = None) -> Dict[str, object]:
    """Latest ``max_recent`` interactions of every user, padded (the input of MEG).

    Args:
        table: encoded interactions sorted by ``user_key`` then time.
        user_key: user key column.
        max_recent: K.
        feature_keys: columns to gather (default: all but ``user_key``).

    Returns:
        ``{"support": {col: [U, K, ...], "mask": [U, K]}, "user": [U], "count": [U]}`` with the
        valid positions first in time order.
    """
    keys = np.asarray(table[user_key])
    if feature_keys is None:
        feature_keys = [k for k in table if k != user_key]
    arrays = {k: np.asarray(table[k]) for k in feature_keys}
    starts, counts = _groups(keys)
    length = np.minimum(counts, max_recent)
    lo = starts + counts - length
    mask = np.arange(max_recent)[None, :] < length[:, None]
    idx = np.where(mask, lo[:, None] + np.arange(max_recent)[None, :], 0)
    return {SUPPORT: _gather(arrays, idx, mask), "user": keys[starts], "count": length}
