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
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from limaml.config import TaskConfig
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


def build_tasks(table: Mapping[str, np.ndarray], user_key: str, task_cfg: TaskConfig,
                feature_keys: Optional[list] = None) -> Dict[str, object]:
    """Builds padded support/query tasks for every user of ``table``.

    Args:
        table: ``{column: [N, ...]}`` encoded interactions sorted by ``user_key`` then time.
        user_key: column holding the user key (ids or hashes; rows of a user must be contiguous).
        task_cfg: support_size S, query_size Q, min_support, min_query, max_tasks_per_user.
        feature_keys: columns to put into support/query (default: every column but ``user_key``).

    Returns:
        ``{"support": {col: [T, S, ...], "mask": [T, S]}, "query": {col: [T, Q, ...], "mask": [T, Q]},
        "user": [T] user keys, "split": [T] split position p within the user's history}``.
        Padded positions (mask 0) hold zeros (``""`` for object columns).
    """
    S, Q = task_cfg.support_size, task_cfg.query_size
    keys = np.asarray(table[user_key])
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
    return {
        SUPPORT: _gather(arrays, s_idx, s_mask),
        QUERY: _gather(arrays, q_idx, q_mask),
        "user": keys[starts[owner]] if total else keys[:0],
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
