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
    newest = frame.groupby(F.USER_ID, sort=True)[F.TIMESTAMP].max()
    users = newest.index.to_numpy().astype(object)
    if stored is None:
        return users
    pos = pd.Index(stored.user_ids).get_indexer(users)
    last = np.where(pos >= 0, stored.last_interaction_ts[np.maximum(pos, 0)], np.iinfo(np.int64).min)
    return users[(pos < 0) | (newest.to_numpy() > last)]


def last_k(frame: pd.DataFrame, users: np.ndarray, k: int) -> pd.DataFrame:
    """The last ``k`` interactions of each of ``users``, sorted by (user, time, item)."""
    sel = frame[frame[F.USER_ID].isin(set(users.tolist()))]
    sel = sel.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable")
    return sel.groupby(F.USER_ID, sort=False).tail(k).reset_index(drop=True)
