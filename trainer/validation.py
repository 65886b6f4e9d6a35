"""Validation rows carved from training users (for tuning and early stopping), two ways.

- :func:`later_interactions_mask`: training users' *later* interactions (the linear references'
  choice of C);
- :func:`held_out_user_roles`: held-out users treated as the budget protocol treats evaluated
  users (a few history rows trainable, the next ones validation, the rest unused), so that early
  stopping judges a model the way the query rows will: on users it has barely seen. Validating
  the deep baselines on training users' later interactions rewarded memorising users through
  their features (a zip code names a few users), which does not carry to new users.

Every model (LiMAML, the DNN baselines, the linear references) is tuned and early-stopped on the
same kind of split, never on query rows: a seeded ``fraction`` of users (by a stable hash of the
user id) lend the later part of their history, positions ``>= ceil(n * (1 - later_share))`` in time
order, at most ``horizon`` rows, to the validation set. Users with fewer than 2 rows lend nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from limaml.config import ProtocolConfig, TrainConfig
from limaml.data import protocols
from schema import features


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


def held_out_user_roles(user_ids: np.ndarray, timestamps: np.ndarray, fraction: float = 0.2,
                        seed: int = 0, protocol: Optional[ProtocolConfig] = None) -> np.ndarray:
    """Role ``[N]`` of each row: ``"train"``, ``"val"`` or ``"unused"`` (any row order).

    A salted ``fraction`` of users is held out as the budget protocol holds out evaluation users
    (:func:`limaml.data.protocols.apply_budget`: cohort-balanced history size k, the first k rows
    trainable, the next ``protocol.horizon`` validation, later rows unused); every other row is
    ``"train"``.

    Args:
        user_ids: ``[N]`` user keys.
        timestamps: ``[N]`` seconds; orders each user's rows (ties keep input order).
        fraction: share of users held out.
        seed: salt of the user hash (added to ``protocol.seed``).
        protocol: cohort edges and horizon of the held-out users (default: ``ProtocolConfig()``).

    Returns:
        ``[N]`` object array of roles.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction {fraction} must be in (0, 1)")
    protocol = ProtocolConfig() if protocol is None else protocol
    n = len(np.asarray(user_ids))
    frame = pd.DataFrame({"user_id": pd.Series(np.asarray(user_ids)).astype(str).to_numpy(),
                          "timestamp": np.asarray(timestamps), "item_id": np.arange(n)})
    vp = dataclasses.replace(protocol, name="budget", eval_fraction=fraction,
                             seed=protocol.seed + 7919 * (seed + 1))
    split = protocols.apply(frame, vp)
    role = split.interactions[protocols.ROLE].to_numpy()
    out = np.empty(n, dtype=object)
    out[split.interactions["item_id"].to_numpy()] = np.where(
        role == "query", "val", np.where(role == "unused", "unused", "train"))
    return out


def validation_rows(data: Mapping[str, np.ndarray], train_cfg: TrainConfig) -> np.ndarray:
    """``[N]`` validation mask: training users' later interactions (:func:`later_interactions_mask`)
    when ``data`` has user ids and timestamps, else a seeded random ``baseline_val_fraction``."""
    n = len(np.asarray(data[features.LABEL]))
    if features.USER_ID in data and features.TIMESTAMP in data:
        # users lend the later half of their rows, so twice the row share in users gives about
        # baseline_val_fraction of the rows
        return later_interactions_mask(
            np.asarray(data[features.USER_ID]), np.asarray(data[features.TIMESTAMP]),
            fraction=max(min(2 * train_cfg.baseline_val_fraction, 0.9), 0.05), later_share=0.5,
            seed=train_cfg.seed)
    rng = np.random.RandomState(train_cfg.seed + 1)
    return rng.uniform(size=n) < train_cfg.baseline_val_fraction


def early_stopping_roles(data: Mapping[str, np.ndarray], train_cfg: TrainConfig) -> np.ndarray:
    """``[N]`` role of each row for a deep baseline: ``"train"``, ``"val"`` or ``"unused"``.

    ``baseline_validation="held_out_users"`` (with user ids and timestamps):
    :func:`held_out_user_roles`; otherwise :func:`validation_rows`.
    """
    if (train_cfg.baseline_validation == "held_out_users" and features.USER_ID in data
            and features.TIMESTAMP in data):
        return held_out_user_roles(
            np.asarray(data[features.USER_ID]), np.asarray(data[features.TIMESTAMP]),
            fraction=max(min(2 * train_cfg.baseline_val_fraction, 0.9), 0.05), seed=train_cfg.seed)
    return np.where(validation_rows(data, train_cfg), "val", "train").astype(object)
