"""The early-stopping split of the deep baselines: held-out users, budget-protocol style."""
from __future__ import annotations

import numpy as np
import pytest

from limaml.config import ProtocolConfig
from trainer import validation


def _rows(counts, rng):
    users = np.concatenate([np.full(c, f"u{i}") for i, c in enumerate(counts)])
    ts = rng.permutation(len(users)) * 10  # time order unrelated to row order
    order = rng.permutation(len(users))  # shuffled row order
    return users[order], ts[order]


def test_held_out_users_train_on_their_first_k_rows_validate_on_the_next_and_drop_the_rest():
    rng = np.random.RandomState(0)
    counts = rng.randint(2, 150, size=400)
    users, ts = _rows(counts, rng)
    protocol = ProtocolConfig(horizon=5)
    role = validation.held_out_user_roles(users, ts, fraction=0.25, seed=3, protocol=protocol)
    held, sizes = 0, []
    for u in np.unique(users):
        r = role[users == u][np.argsort(ts[users == u], kind="stable")]  # this user's time order
        if set(r) == {"train"}:
            continue
        held += 1
        k = int((r == "train").sum())
        n_val = int((r == "val").sum())
        # by hand: train* then val* then unused*, k history rows, min(horizon, n - k) validation
        expected = ["train"] * k + ["val"] * min(5, len(r) - k) + ["unused"] * max(0, len(r) - k - 5)
        assert list(r) == expected, u
        assert n_val >= 1
        sizes.append(k)
    assert 0.15 * 400 < held < 0.35 * 400  # about a quarter of the users
    # cohort-balanced history sizes, as the budget protocol's evaluation users: all five cohorts
    edges = np.searchsorted([0, 1, 5, 20, 100], sizes, side="right") - 1
    assert set(edges.tolist()) == {0, 1, 2, 3, 4}
    # another seed holds out other users
    other = validation.held_out_user_roles(users, ts, fraction=0.25, seed=4, protocol=protocol)
    assert set(users[role == "val"]) != set(users[other == "val"])
    with pytest.raises(ValueError, match="fraction"):
        validation.held_out_user_roles(users, ts, fraction=1.5)
