"""Columnar batches of whole users: the unit that travels through MEG's Beam pipeline.

A :class:`UserBatch` holds the interactions of ``U`` users as one numpy array per column
(``{column: [N, ...]}``), grouped by user (contiguous) and in time order within each user, with
``offsets [U + 1]`` marking where each user's rows start. Every user's rows are entirely inside
one batch: grouping happens before (a sorted table cut at user boundaries, or a shuffle by user
bucket), never across batches. No Python object per interaction or per user is ever built.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from schema import features as F

Columns = Dict[str, np.ndarray]


def _starts(keys: np.ndarray) -> np.ndarray:
    """Offsets ``[U + 1]`` of the runs of equal consecutive ``keys`` [N] (last entry N)."""
    n = keys.shape[0]
    if n == 0:
        return np.zeros(1, np.int64)
    change = np.ones(n, bool)
    change[1:] = keys[1:] != keys[:-1]
    return np.append(np.flatnonzero(change), n).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class UserBatch:
    """Interactions of a group of whole users, columnar.

    Attributes:
        columns: ``{column: [N, ...]}``; rows grouped by user (``columns[F.USER_ID]``, object
            str) and sorted by ``F.TIMESTAMP`` within each user.
        offsets: int64 ``[U + 1]``: user ``u`` owns rows ``offsets[u]:offsets[u + 1]``
            (``offsets[0] == 0``, ``offsets[-1] == N``, strictly increasing).
    """

    columns: Columns
    offsets: np.ndarray

    @property
    def num_users(self) -> int:
        """U."""
        return int(self.offsets.shape[0] - 1)

    @property
    def num_rows(self) -> int:
        """N."""
        return int(self.offsets[-1])

    @property
    def user_ids(self) -> np.ndarray:
        """Object str ``[U]``: each user's id."""
        return self.columns[F.USER_ID][self.offsets[:-1]]

    @property
    def counts(self) -> np.ndarray:
        """int64 ``[U]``: rows per user."""
        return np.diff(self.offsets)

    @classmethod
    def from_grouped(cls, columns: Mapping[str, np.ndarray]) -> "UserBatch":
        """Batch of a table already grouped by user and time-ordered within each user."""
        cols = {k: np.asarray(v) for k, v in columns.items()}
        return cls(cols, _starts(cols[F.USER_ID]))

    @classmethod
    def group(cls, columns: Mapping[str, np.ndarray]) -> "UserBatch":
        """Groups any table by user, time order within each user (stable: ties keep input order).

        Args:
            columns: ``{column: [N, ...]}`` in any order; needs ``user_id`` and ``timestamp``.
        """
        cols = {k: np.asarray(v) for k, v in columns.items()}
        uid = cols[F.USER_ID].astype(str)
        order = np.lexsort((cols[F.TIMESTAMP], uid))
        if not np.array_equal(order, np.arange(order.shape[0])):
            cols = {k: v[order] for k, v in cols.items()}
        return cls.from_grouped(cols)

    def take_users(self, lo: int, hi: int) -> "UserBatch":
        """Users ``[lo, hi)`` (row slices are views)."""
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        return UserBatch({k: v[a:b] for k, v in self.columns.items()}, self.offsets[lo:hi + 1] - a)

    def take_rows(self, keep: np.ndarray) -> "UserBatch":
        """The rows where ``keep`` [N] bool is set; users left with no row disappear."""
        if keep.all():
            return self
        cols = {k: v[keep] for k, v in self.columns.items()}
        return UserBatch.from_grouped(cols)

    def not_after(self, as_of: Optional[int]) -> "UserBatch":
        """Rows with ``timestamp <= as_of`` (all when None)."""
        if as_of is None:
            return self
        return self.take_rows(self.columns[F.TIMESTAMP].astype(np.int64) <= int(as_of))

    def latest(self, k: int) -> "UserBatch":
        """Each user's last ``k`` rows (vectorised: a row is kept when its rank from the end < k)."""
        counts = self.counts
        if counts.size == 0 or counts.max() <= k:
            return self
        rank_from_end = np.repeat(self.offsets[1:], counts) - 1 - np.arange(self.num_rows)
        return self.take_rows(rank_from_end < k)

    def select(self, names: Sequence[str]) -> "UserBatch":
        """Only the columns ``names`` (``user_id`` and ``timestamp`` always kept)."""
        keep = list(dict.fromkeys([F.USER_ID, F.TIMESTAMP] + list(names)))
        missing = [c for c in keep if c not in self.columns]
        if missing:
            raise KeyError(f"user batch lacks encoded column(s) {missing}; it has "
                           f"{sorted(self.columns)}")
        return UserBatch({k: self.columns[k] for k in keep}, self.offsets)

    def split(self, max_users: int) -> Iterator["UserBatch"]:
        """Consecutive batches of at most ``max_users`` users (never splitting a user)."""
        for lo in range(0, self.num_users, max_users):
            yield self.take_users(lo, min(self.num_users, lo + max_users))


def concat(batches: Sequence[UserBatch]) -> UserBatch:
    """One batch of several batches' users (disjoint users; order kept)."""
    batches = [b for b in batches if b.num_users]
    if len(batches) == 1:
        return batches[0]
    if not batches:
        raise ValueError("concat needs at least one non-empty UserBatch")
    names = list(batches[0].columns)
    cols = {k: np.concatenate([b.columns[k] for b in batches]) for k in names}
    shifts = np.cumsum([0] + [b.num_rows for b in batches[:-1]])
    offsets = np.concatenate([batches[0].offsets[:1]] + [
        b.offsets[1:] + s for b, s in zip(batches, shifts)])
    return UserBatch(cols, offsets.astype(np.int64))


def user_cuts(offsets: np.ndarray, target_rows: int) -> List[int]:
    """User indices where to cut a grouped table into pieces of about ``target_rows`` rows.

    A cut always falls on a user boundary: a piece ends after the first user whose rows reach
    (or pass) the next multiple of ``target_rows``; a user with more rows than ``target_rows``
    is one piece of its own, never split.

    Args:
        offsets: int64 ``[U + 1]`` user offsets.
        target_rows: rows per piece (>= 1).

    Returns:
        ``[0, c_1, ..., U]`` increasing user indices (piece ``i`` = users ``cuts[i]:cuts[i+1]``).
    """
    if target_rows < 1:
        raise ValueError(f"target_rows must be >= 1, got {target_rows}")
    users = offsets.shape[0] - 1
    cuts = [0]
    while cuts[-1] < users:
        start_row = offsets[cuts[-1]]
        # first user boundary at or past start_row + target_rows
        nxt = int(np.searchsorted(offsets, start_row + target_rows, side="left"))
        cuts.append(max(cuts[-1] + 1, min(nxt, users)))
    return cuts
