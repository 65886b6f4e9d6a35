"""Support windows of a :class:`UserBatch`: each user's latest K rows, padded, by offsets.

The window of user ``u`` is rows ``max(start_u, end_u - K) : end_u`` laid out at positions
``0..len-1`` (time order) of a ``[U, K]`` grid; padding positions after them hold zeros and mask
0, exactly what :func:`trainer.tasks.build_support_sets` builds. The windows are kept as row
indices (``index [U, K]``): the kernel gathers each chunk's grid itself
(:func:`trainer.finetune.embeddings_from_rows`); ``support`` builds the whole grid on demand.
No loop over users.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Sequence

import numpy as np

from components.meta_embedding_gen.user_batch import UserBatch
from schema import features as F


@dataclasses.dataclass(frozen=True)
class SupportWindows:
    """Padded support sets of U users, as row indices into the batch's columns.

    Attributes:
        rows: ``{feature: [N, ...]}`` the batch's columns (not copied).
        index: int64 ``[U, K]``: the row of each window position (row 0 where masked).
        mask: float32 ``[U, K]``; 1 on each user's ``size`` first positions.
        user_ids: object str ``[U]``.
        size: int64 ``[U]`` rows in the window (``min(rows, K)``).
        last_ts: int64 ``[U]`` the window's latest timestamp.
    """

    rows: Dict[str, np.ndarray]
    index: np.ndarray
    mask: np.ndarray
    user_ids: np.ndarray
    size: np.ndarray
    last_ts: np.ndarray

    @functools.cached_property
    def support(self) -> Dict[str, np.ndarray]:
        """``{feature: [U, K, ...]}`` the padded grids (zeros where masked), built on first use."""
        pad = self.mask == 0
        out: Dict[str, np.ndarray] = {}
        for name, col in self.rows.items():
            vals = col[self.index]  # a fresh array: padding zeroed in place (no 2nd copy)
            vals[pad] = 0
            out[name] = vals
        return out


def support_windows(batch: UserBatch, max_recent: int, feature_keys: Sequence[str]) -> SupportWindows:
    """Each user's latest ``max_recent`` rows as positions of a padded ``[U, K]`` grid.

    Args:
        batch: U users (each with >= 1 row), time-ordered within each user.
        max_recent: K.
        feature_keys: columns of ``rows`` (and of ``support``).

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
    index = np.where(mask, lo[:, None] + pos, 0)
    ts = batch.columns[F.TIMESTAMP].astype(np.int64)
    last_ts = ts[ends - 1] if ends.size else np.zeros(0, np.int64)
    return SupportWindows(rows={k: batch.columns[k] for k in feature_keys}, index=index,
                          mask=mask.astype(np.float32), user_ids=batch.user_ids, size=size,
                          last_ts=last_ts)
