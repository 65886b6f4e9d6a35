"""Evaluation protocols: which interactions are history (trainable) and which are query (scored).

Both protocols give each evaluated user a *history* (what every model may train on and what
meta-embedding generation adapts on) and a *query* (what is scored), and an activity cohort =
the size of the history. Every interaction gets a role:

- ``train``: a training user's interaction (budget) -- trainable;
- ``history``: an evaluated user's history -- trainable, and the MEG input;
- ``query``: scored, never trained on;
- ``unused``: past the horizon.

``budget`` (MovieLens): users split by a stable hash into training and evaluation users (or,
cross-fitting, into K folds of which one is evaluated; see ``ProtocolConfig.eval_folds``); each
evaluation user gets a cohort (stratified: the feasible cohort with the fewest users so far, in
hash order) and a history size k drawn uniformly inside it; the first k interactions by time are
history, the next ones up to ``horizon`` are query.

``cutoff`` (production): a global time T; history = before T, query = [T, T + horizon).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd

from limaml.config import ProtocolConfig
from schema import features as F

ROLE = "role"
COHORT = "cohort"
TRAINABLE_ROLES = ("train", "history")


def cohort_names(edges: Tuple[int, ...]) -> List[str]:
    """Names of the cohorts for lower ``edges``: (0, 1, 5, 20, 100) -> 0, 1-4, 5-19, 20-99, 100+."""
    names = []
    for lo, hi in zip(edges, list(edges[1:]) + [None]):
        if hi is None:
            names.append(f"{lo}+")
        elif hi - lo == 1:
            names.append(str(lo))
        else:
            names.append(f"{lo}-{hi - 1}")
    return names


def cohort_of(history_sizes: np.ndarray, edges: Tuple[int, ...]) -> np.ndarray:
    """Cohort name of each history size (vectorised)."""
    idx = np.searchsorted(np.asarray(edges), np.asarray(history_sizes), side="right") - 1
    return np.array(cohort_names(edges), dtype=object)[idx]


def stable_user_hash(user_ids: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic uint64 hash of user ids (same value on every machine and run)."""
    salted = pd.Series(user_ids, dtype=object).astype(str) + f"#{seed}"
    return pd.util.hash_pandas_object(salted, index=False).to_numpy(dtype=np.uint64)


@dataclasses.dataclass(frozen=True)
class Split:
    """A protocol applied to a dataset.

    Attributes:
        interactions: the input rows (sorted by user, time) with a ``role`` column.
        users: one row per evaluated user: user_id, cohort, history_size, query_size.
        protocol: the protocol settings used.
        cutoff_ts: T for the cutoff protocol, else None.
    """

    interactions: pd.DataFrame
    users: pd.DataFrame
    protocol: ProtocolConfig
    cutoff_ts: int | None = None

    def cohort_table(self) -> pd.DataFrame:
        """Users and examples (history, query) per cohort, all cohorts listed."""
        names = cohort_names(self.protocol.cohort_edges)
        g = self.users.groupby(COHORT)
        table = pd.DataFrame({
            "users": g.size(),
            "history_examples": g["history_size"].sum(),
            "query_examples": g["query_size"].sum(),
        }).reindex(names).fillna(0).astype(np.int64)
        table.index.name = COHORT
        return table


def _position_in_user(frame: pd.DataFrame) -> np.ndarray:
    """0-based position of each row in its user's history (rows sorted by user, time)."""
    return frame.groupby(F.USER_ID, sort=False).cumcount().to_numpy()


def user_fold(user_hash: np.ndarray, folds: int) -> np.ndarray:
    """Fold in ``[0, folds)`` of each user from its :func:`stable_user_hash` (integer math).

    The hash's last six decimal digits m give fold ``m * folds // 10**6``, so fold 0 of 5 holds
    exactly the users that ``eval_fraction`` 0.2 evaluates (``m / 10**6 < 0.2``).
    """
    m = (np.asarray(user_hash, dtype=np.uint64) % np.uint64(1_000_000)).astype(np.int64)
    return m * int(folds) // 1_000_000


def budget_assignment(user_ids: np.ndarray, counts: np.ndarray, cfg: ProtocolConfig) -> pd.DataFrame:
    """Chooses the evaluation users of the budget protocol, their cohort and history size.

    Needs only the per-user interaction counts (users x 1), never the interactions, so a
    distributed job can collect the counts and broadcast the result.

    Args:
        user_ids: [users] ids.
        counts: [users] interactions per user.
        cfg: the protocol settings.

    Returns:
        One row per evaluation user: user_id, cohort, history_size, query_size.
    """
    user_ids = np.asarray(user_ids, dtype=object)
    counts = np.asarray(counts, dtype=np.int64)
    h = stable_user_hash(user_ids, cfg.seed)
    is_eval = user_fold(h, cfg.eval_folds) == cfg.eval_fold if cfg.eval_folds else (
        (h % np.uint64(1_000_000)).astype(np.float64) / 1e6 < cfg.eval_fraction)
    order = np.argsort(h[is_eval], kind="stable")
    eval_ids, eval_n = user_ids[is_eval][order], counts[is_eval][order]

    edges = np.asarray(cfg.cohort_edges)
    names = cohort_names(cfg.cohort_edges)
    # A cohort is feasible when the user keeps >= 1 query interaction after its smallest history.
    feasible = edges[None, :] <= (eval_n[:, None] - 1)
    assigned = np.empty(len(eval_ids), dtype=np.int64)
    filled = np.zeros(len(edges), dtype=np.int64)
    for i in range(len(eval_ids)):  # greedy balancing over evaluation users (per user, not per row)
        options = np.flatnonzero(feasible[i])
        pick = options[np.argmin(filled[options])]
        assigned[i] = pick
        filled[pick] += 1
    rng = np.random.default_rng(cfg.seed)
    lo = edges[assigned]
    hi_edge = np.append(edges[1:] - 1, np.iinfo(np.int64).max)[assigned]
    hi = np.minimum(hi_edge, eval_n - 1)
    k = lo + np.floor(rng.uniform(0, 1, len(eval_ids)) * (hi - lo + 1)).astype(np.int64)
    users = pd.DataFrame({
        F.USER_ID: eval_ids,
        COHORT: np.array(names, dtype=object)[assigned],
        "history_size": k,
        "query_size": np.minimum(eval_n - k, cfg.horizon),
    })
    return users.sort_values(F.USER_ID).reset_index(drop=True)


def budget_roles(positions: np.ndarray, history_size: Optional[int], horizon: int) -> np.ndarray:
    """Roles of one user's interactions by their 0-based position in time order.

    ``history_size`` None means a training user (every interaction is ``train``).
    """
    if history_size is None:
        return np.full(len(positions), "train", dtype=object)
    return np.where(positions < history_size, "history",
                    np.where(positions < history_size + horizon, "query", "unused")).astype(object)


def cutoff_roles(timestamps: np.ndarray, cutoff_ts: int, horizon_seconds: int) -> np.ndarray:
    """Roles under the cutoff protocol: before T history, [T, T+horizon) query, later unused."""
    return np.where(timestamps < cutoff_ts, "history",
                    np.where(timestamps < cutoff_ts + horizon_seconds, "query", "unused")).astype(object)


def apply_budget(frame: pd.DataFrame, cfg: ProtocolConfig) -> Split:
    """Applies the ``budget`` protocol (see module docstring)."""
    frame = frame.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable").reset_index(drop=True)
    counts = frame.groupby(F.USER_ID, sort=True).size()
    users = budget_assignment(counts.index.to_numpy(dtype=object), counts.to_numpy(), cfg)
    pos = _position_in_user(frame)
    k_row = frame[F.USER_ID].map(pd.Series(users["history_size"].to_numpy(), index=users[F.USER_ID]))
    evaluated = k_row.notna().to_numpy()
    k = k_row.fillna(0).to_numpy().astype(np.int64)
    role = np.where(evaluated, budget_roles(pos - k, 0, cfg.horizon), "train").astype(object)
    return Split(frame.assign(**{ROLE: role}), users, cfg)


def apply_cutoff(frame: pd.DataFrame, cfg: ProtocolConfig) -> Split:
    """Applies the ``cutoff`` protocol (see module docstring)."""
    frame = frame.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable").reset_index(drop=True)
    ts = frame[F.TIMESTAMP].to_numpy()
    cutoff = int(cfg.cutoff_ts if cfg.cutoff_ts is not None else np.quantile(ts, cfg.cutoff_quantile))
    role = cutoff_roles(ts, cutoff, cfg.horizon_seconds)
    out = frame.assign(**{ROLE: role})
    by_user = pd.DataFrame({F.USER_ID: out[F.USER_ID], "h": role == "history", "q": role == "query"})
    sizes = by_user.groupby(F.USER_ID, sort=True)[["h", "q"]].sum()
    sizes = sizes[sizes["q"] > 0]
    users = pd.DataFrame({
        F.USER_ID: sizes.index.to_numpy(dtype=object),
        COHORT: cohort_of(sizes["h"].to_numpy(), cfg.cohort_edges),
        "history_size": sizes["h"].to_numpy().astype(np.int64),
        "query_size": sizes["q"].to_numpy().astype(np.int64),
    })
    return Split(out, users.reset_index(drop=True), cfg, cutoff_ts=cutoff)


def apply(frame: pd.DataFrame, cfg: ProtocolConfig) -> Split:
    """Applies the protocol named by ``cfg.name``."""
    return apply_budget(frame, cfg) if cfg.name == "budget" else apply_cutoff(frame, cfg)
