"""Support windows of a :class:`UserBatch`: each user's latest K rows, padded, by offsets.

The window of user ``u`` is rows ``max(start_u, end_u - K) : end_u`` laid out at positions
``0..len-1`` (time order) of a ``[U, K]`` grid; padding positions after them hold zeros and mask
0, exactly what :func:`trainer.tasks.build_support_sets` builds. One fancy-index per column; no
loop over users.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Sequence

import numpy as np

from components.meta_embedding_gen.user_batch import UserBatch
from schema import features as F


@dataclasses.dataclass(frozen=True)
class SupportWindows:
    """Padded support sets of U users.

    Attributes:
        support: ``{feature: [U, K, ...]}`` (zeros where masked).
        mask: float32 ``[U, K]``; 1 on each user's ``size`` first positions.
        user_ids: object str ``[U]``.
        size: int64 ``[U]`` rows in the window (``min(rows, K)``).
        last_ts: int64 ``[U]`` the window's latest timestamp.
    """

    support: Dict[str, np.ndarray]
    mask: np.ndarray
    user_ids: np.ndarray
    size: np.ndarray
    last_ts: np.ndarray


def support_windows(batch: UserBatch, max_recent: int, feature_keys: Sequence[str]) -> SupportWindows:
    """Cuts each user's latest ``max_recent`` rows into a padded ``[U, K, ...]`` grid.

    Args:
        batch: U users (each with >= 1 row), time-ordered within each user.
        max_recent: K.
        feature_keys: columns to gather into ``support``.

    Returns:
        :class:`SupportWindows`.

    Raises:
        KeyError: a requested column is missing (named, with the columns present).
    """
    missing = [k for k in feature_keys if k not in batch.columns]
    if missing:
        raise KeyError(f"rows lack encoded column(s) {missing}; they have {sorted(batch.columns)}")
    ends = batch.offsets[1:]
    size = np.minimum(batch.counts, max_recent).astype(np.int64)
    lo = ends - size
    pos = np.arange(max_recent)[None, :]
    mask = pos < size[:, None]
    idx = np.where(mask, lo[:, None] + pos, 0)
    support: Dict[str, np.ndarray] = {}
    pad = ~mask
    any_pad = bool(pad.any())
    for name in feature_keys:
        vals = batch.columns[name][idx]  # a fresh array: padding zeroed in place (no 2nd copy)
        if any_pad:
            vals[pad] = 0
        support[name] = vals
    ts = batch.columns[F.TIMESTAMP].astype(np.int64)
    last_ts = ts[ends - 1] if ends.size else np.zeros(0, np.int64)
    return SupportWindows(support=support, mask=mask.astype(np.float32), user_ids=batch.user_ids,
                          size=size, last_ts=last_ts)
