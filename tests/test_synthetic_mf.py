"""The learned-items reference of synthetic data (benchmarks/synthetic_mf.py)."""
from __future__ import annotations

import numpy as np

from benchmarks import synthetic_mf
from trainer import evaluate


def _problem(rng: np.random.RandomState, n: int, n_users: int, n_items: int, d: int):
    users = rng.randint(0, n_users, n)
    items = rng.randint(0, n_items, n)
    demo = [rng.randint(0, 3, n_users)[users], rng.randint(0, 2, n_users)[users]]
    return users, items, demo


def test_the_fit_zeroes_the_finite_difference_gradient_of_the_map_objective():
    rng = np.random.RandomState(0)
    n_users, n_items, d = 6, 5, 2
    users, items, demo = _problem(rng, 80, n_users, n_items, d)
    labels = (rng.rand(80) < 0.4).astype(float)
    shape = (n_users, n_items, (3, 2), d)
    p = synthetic_mf.fit(users, items, demo, labels, n_users, n_items, [3, 2], d,
                         lam_user=0.7, lam_item=1.3, lam_bias=0.5)
    theta = np.concatenate([[p.g], p.b, p.r.ravel(), p.v.ravel()] + [t.ravel() for t in p.t])

    def value(x):
        z = synthetic_mf.mf_logits(synthetic_mf._unpack(x, n_users, n_items, (3, 2), d), users, items, demo)
        q = synthetic_mf._unpack(x, n_users, n_items, (3, 2), d)
        return (np.sum(np.logaddexp(0, z) - labels * z)
                + 0.5 * (0.7 * np.sum(q.r ** 2) + 1.3 * (np.sum(q.v ** 2) + sum(np.sum(t ** 2) for t in q.t))
                         + 0.5 * np.sum(q.b ** 2)))

    eye = np.eye(theta.size)
    fd = np.array([(value(theta + 1e-6 * e) - value(theta - 1e-6 * e)) / 2e-6 for e in eye])
    np.testing.assert_allclose(fd, 0.0, atol=1e-4)
    # and the objective's own gradient agrees with finite differences away from the optimum
    x = theta + rng.normal(0, 0.3, theta.size)
    _, grad = synthetic_mf.objective(x, users, items, demo, labels, shape, 0.7, 1.3, 0.5)
    fd = np.array([(value(x + 1e-6 * e) - value(x - 1e-6 * e)) / 2e-6 for e in eye])
    np.testing.assert_allclose(grad, fd, atol=1e-4)


def test_a_planted_factor_model_is_recovered_up_to_the_label_noise():
    rng = np.random.RandomState(3)
    n_users, n_items, d, n = 60, 40, 2, 30000
    users, items, demo = _problem(rng, n, n_users, n_items, d)
    r, v = rng.normal(0, 1, (n_users, d)), rng.normal(0, 1, (n_items, d))
    b = rng.normal(0, 0.5, n_items)
    truth = b[items] + np.einsum("nd,nd->n", r[users], v[items]) - 0.2
    labels = (rng.rand(n) < 1 / (1 + np.exp(-truth))).astype(float)
    train = np.arange(n) < n - 5000
    p = synthetic_mf.fit(users[train], items[train], [c[train] for c in demo], labels[train],
                         n_users, n_items, [3, 2], d, lam_user=1.0, lam_item=1.0)
    test = ~train
    z = synthetic_mf.mf_logits(p, users[test], items[test], [c[test] for c in demo])
    oracle = evaluate.auc(labels[test], truth[test])
    assert np.corrcoef(z, truth[test])[0, 1] > 0.95
    assert evaluate.auc(labels[test], z) > oracle - 0.01
