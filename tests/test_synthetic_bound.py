"""The known-items reference of synthetic data (benchmarks/synthetic_bound.py)."""
from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks import synthetic_bound
from limaml.config import ProtocolConfig
from limaml.data import protocols, synthetic
from schema import features as F


def test_map_personal_part_zeroes_the_finite_difference_gradient_of_the_objective():
    rng = np.random.RandomState(0)
    u, h, d = 3, 7, 4
    x = rng.normal(0, 1, (u, h, d))
    off = rng.normal(0, 0.5, (u, h))
    y = (rng.rand(u, h) < 0.5).astype(float)
    mask = (np.arange(h)[None] < np.array([7, 2, 0])[:, None]).astype(float)
    prior = rng.normal(0, 1, (u, d))
    scale, noise = 0.7, 0.8
    r = synthetic_bound.map_personal_part(x, off, y, mask, prior, scale, noise)

    def objective(k, rk):
        z = off[k] + scale * x[k] @ (prior[k] + rk)
        return float(np.sum(mask[k] * (np.logaddexp(0, z) - y[k] * z)) + rk @ rk / (2 * noise ** 2))

    for k in range(u):
        grad = [(objective(k, r[k] + 1e-6 * e) - objective(k, r[k] - 1e-6 * e)) / 2e-6 for e in np.eye(d)]
        np.testing.assert_allclose(grad, 0.0, atol=1e-6)
    np.testing.assert_array_equal(r[2], 0.0)  # no rows: the prior


def test_a_long_planted_history_recovers_the_personal_part():
    rng = np.random.RandomState(1)
    d, h = 3, 20000
    truth = np.array([0.8, -0.5, 0.3])
    x = rng.normal(0, 1, (1, h, d))
    prior = np.zeros((1, d))
    p = 1.0 / (1.0 + np.exp(-(x[0] @ truth)))
    y = (rng.rand(h) < p).astype(float)[None]
    r = synthetic_bound.map_personal_part(x, np.zeros((1, h)), y, np.ones((1, h)), prior, 1.0, 1.0)
    np.testing.assert_allclose(r[0], truth, atol=0.05)


def test_without_personal_noise_the_reference_is_the_oracle():
    cfg = synthetic.SyntheticConfig(num_users=300, num_items=60, mean_interactions=15,
                                    user_noise=1e-4, seed=3)
    world = synthetic.generate_world(cfg)
    split = protocols.apply(world.frame, ProtocolConfig(name="cutoff"))
    rows = split.interactions
    query = rows[rows[protocols.ROLE] == "query"]
    got = synthetic_bound.known_items_logits(world, cfg, rows)
    oracle = np.log(query[F.ORACLE_PROB]) - np.log1p(-query[F.ORACLE_PROB])
    assert len(got) == len(query) > 100
    np.testing.assert_allclose(got, oracle.to_numpy(), atol=1e-3)
    # with the personal noise back, the reference no longer knows the users
    noisy = dataclasses.replace(cfg, user_noise=1.0)
    world = synthetic.generate_world(noisy)
    rows = protocols.apply(world.frame, ProtocolConfig(name="cutoff")).interactions
    query = rows[rows[protocols.ROLE] == "query"]
    oracle = np.log(query[F.ORACLE_PROB]) - np.log1p(-query[F.ORACLE_PROB])
    assert np.abs(synthetic_bound.known_items_logits(world, noisy, rows) - oracle.to_numpy()).mean() > 0.1
