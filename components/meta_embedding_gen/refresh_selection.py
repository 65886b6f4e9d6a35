"""Refresh: which users to regenerate, and on which interactions.

As of time ``T``, a user **has new interactions** when they have an interaction with
``last_interaction_ts(store) < timestamp <= T``, or when they have an interaction ``<= T`` and no
row in the store's copy of the version (:func:`changed_users`). Those users are fine-tuned on
their last K interactions ``<= T`` (:func:`last_k`; the full log, not only the new part).

Used by :mod:`components.meta_embedding_gen.refresh`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from components.meta_embedding_gen.refresh_store import StoredVersion
from schema import features as F


def changed_users(frame: pd.DataFrame, stored: Optional[StoredVersion]) -> np.ndarray:
    """Users of ``frame`` (already cut at as_of) with interactions newer than their stored row.

    Args:
        frame: canonical interactions with ``timestamp <= as_of``.
        stored: the stored version (None: nothing stored, every user is changed).

    Returns:
        Sorted user ids [C] (object).
    """
    col = frame[F.USER_ID]
    if isinstance(col.dtype, pd.CategoricalDtype):  # by the integer codes (pandas 1.5's groupby
        codes = col.cat.codes.to_numpy()            # ignores sort= on observed categories)
        seen = codes >= 0
        by_code = pd.Series(frame[F.TIMESTAMP].to_numpy()[seen]).groupby(codes[seen], sort=True).max()
        users = col.cat.categories.to_numpy(dtype=object)[by_code.index.to_numpy()]
        newest = by_code.to_numpy()
        if not col.cat.categories.is_monotonic_increasing:
            order = np.argsort(users, kind="stable")
            users, newest = users[order], newest[order]
    else:
        by_user = frame.groupby(F.USER_ID, sort=True)[F.TIMESTAMP].max()
        users, newest = by_user.index.to_numpy().astype(object), by_user.to_numpy()
    if stored is None:
        return users
    pos = pd.Index(stored.user_ids).get_indexer(users)
    last = np.where(pos >= 0, stored.last_interaction_ts[np.maximum(pos, 0)], np.iinfo(np.int64).min)
    return users[(pos < 0) | (newest > last)]


def last_k(frame: pd.DataFrame, users: np.ndarray, k: int) -> pd.DataFrame:
    """The last ``k`` interactions of each of ``users``, sorted by (user, time, item).

    Ties on all three keep the frame's order. Vectorised: the rows are ordered by one
    ``np.lexsort`` of sorted codes (skipped when already in order, as prepared data is) and a
    row is kept when fewer than ``k`` rows of its user follow it.

    Args:
        frame: canonical interactions.
        users: user ids ``[C]`` to keep.
        k: interactions per user (>= 1).

    Returns:
        The selected rows, index reset.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (interactions per user), got {k}")
    rows = np.flatnonzero(frame[F.USER_ID].isin(users).to_numpy())  # positions in ``frame``
    user = _order_codes(frame[F.USER_ID], rows)
    item = _order_codes(frame[F.ITEM_ID], rows)
    keys = (item, frame[F.TIMESTAMP].to_numpy()[rows], user)  # last key first (np.lexsort)
    if _ordered(keys):  # prepared data is stored in this order: nothing to sort
        order = np.arange(user.shape[0])
    else:
        order = np.lexsort(keys)  # stable: ties keep the frame's order
    by_user = user[order]
    after = np.searchsorted(by_user, by_user, side="right") - np.arange(by_user.shape[0]) - 1
    return frame.iloc[rows[order[after < k]]].reset_index(drop=True)  # one copy of the rows


def _sorted_categories(col: pd.Series) -> bool:
    """A categorical column whose categories are in string order and has no missing value."""
    return (isinstance(col.dtype, pd.CategoricalDtype) and col.cat.categories.is_monotonic_increasing
            and not (col.cat.codes.to_numpy() < 0).any())


def _order_codes(col: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Integers ``[len(rows)]`` ordered as the values of ``col`` at ``rows`` are.

    A categorical column with sorted categories (``read_prepared(categorical=True)``) gives its
    codes; anything else is factorized (sorted; a missing value gets a code of its own).
    """
    if _sorted_categories(col):
        return col.cat.codes.to_numpy()[rows]
    return pd.factorize(col.to_numpy()[rows], sort=True, use_na_sentinel=False)[0]


def _ordered(keys) -> bool:
    """Whether rows are already sorted by ``keys`` (``np.lexsort`` order: last key primary)."""
    tied = np.ones(max(keys[0].shape[0] - 1, 0), bool)
    for key in reversed(keys):
        step = np.diff(key)
        if (step[tied] < 0).any():
            return False
        tied &= step == 0
    return True
