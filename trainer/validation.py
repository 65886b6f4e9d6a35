"""Validation rows carved from training users' *later* interactions (for tuning and early stopping).

Every model (LiMAML, the DNN baselines, the linear references) is tuned and early-stopped on the
same kind of split, never on query rows: a seeded ``fraction`` of users (by a stable hash of the
user id) lend the later part of their history, positions ``>= ceil(n * (1 - later_share))`` in time
order, at most ``horizon`` rows, to the validation set. Users with fewer than 2 rows lend nothing.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def later_interactions_mask(user_ids: np.ndarray, timestamps: np.ndarray, fraction: float = 0.2,
                            later_share: float = 0.5, horizon: int = 20, seed: int = 0) -> np.ndarray:
    """Boolean mask ``[N]`` of validation rows (any row order; no Python loop over users).

    Args:
        user_ids: ``[N]`` user keys.
        timestamps: ``[N]`` seconds; orders each user's rows (ties keep input order).
        fraction: share of users that lend validation rows, chosen by a salted stable hash.
        later_share: share of a chosen user's rows (the latest ones) that become validation.
        horizon: at most this many validation rows per user.
        seed: salt of the user hash.

    Returns:
        ``[N]`` bool, True for validation rows.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction {fraction} must be in (0, 1)")
    users = pd.Series(np.asarray(user_ids)).astype(str)
    n = len(users)
    if n == 0:
        return np.zeros(0, bool)
    h = pd.util.hash_pandas_object(users + f"#val{seed}", index=False).to_numpy(np.uint64)
    chosen = (h % np.uint64(1_000_000)).astype(np.float64) / 1e6 < fraction
    frame = pd.DataFrame({"u": users.to_numpy(), "t": np.asarray(timestamps), "i": np.arange(n)})
    frame = frame.sort_values(["u", "t", "i"], kind="stable")
    pos = frame.groupby("u", sort=False).cumcount().to_numpy()
    count = frame.groupby("u", sort=False)["i"].transform("size").to_numpy()
    first = np.maximum(np.ceil(count * (1.0 - later_share)).astype(np.int64), 1)
    val_sorted = (pos >= first) & (pos < first + horizon) & (count >= 2)
    out = np.zeros(n, bool)
    out[frame["i"].to_numpy()] = val_sorted
    return out & chosen
