"""Hand-written numerics of the trainer against references: the rank-sum AUC of
``trainer/evaluate.py`` against scikit-learn, and the Adam of ``trainer/maml.py`` against the
update of Kingma & Ba (2015, Algorithm 1 in the form of their section 2, epsilon added to
sqrt(v)) and against Keras's Adam."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from trainer.evaluate import auc
from trainer.maml import Adam


@pytest.mark.parametrize("seed, levels", [(0, 3), (1, 10), (2, 1000), (3, 2)])
def test_rank_sum_auc_matches_sklearn_with_ties(seed, levels):
    rng = np.random.default_rng(seed)
    n = 400
    labels = rng.integers(0, 2, n)
    # few distinct score levels: many ties within and across classes
    scores = np.round(rng.random(n) * (levels - 1) + 0.3 * labels) / levels
    assert len(np.unique(scores)) < n  # ties present
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_rank_sum_auc_by_hand_and_one_class():
    # pairs (pos, neg): (0.8, 0.2) win, (0.8, 0.8) tie, (0.5, 0.2) win, (0.5, 0.8) loss -> 2.5 / 4
    assert auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.2, 0.5, 0.8])) == 0.625
    assert math.isnan(auc(np.ones(5), np.arange(5.0)))
    assert math.isnan(auc(np.zeros(5), np.arange(5.0)))


def _kingma_ba(theta, grads, lr, b1, b2, eps):
    """Adam by the paper's efficient form: alpha_t = lr sqrt(1-b2^t)/(1-b1^t), eps on sqrt(v)."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    out = []
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta = theta - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        out.append(theta.copy())
    return out


def _grads(steps: int = 6):
    rng = np.random.default_rng(7)
    # sign changes and scale changes across steps (one tiny gradient exercises epsilon)
    scales = np.array([1.0, 1e-3, 10.0, 0.5, 1e-8, 2.0])[:steps]
    return [rng.normal(size=(3, 2)) * s for s in scales]


def test_adam_matches_kingma_ba_over_steps():
    theta0 = np.array([[0.5, -1.0], [2.0, 0.0], [-0.3, 0.7]])
    grads = _grads()
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-7
    var = tf.Variable(theta0, dtype=tf.float64)
    opt = Adam([var], lr=lr, beta1=b1, beta2=b2, epsilon=eps)
    expected = _kingma_ba(theta0, grads, lr, b1, b2, eps)
    for step, (g, want) in enumerate(zip(grads, expected), 1):
        opt.apply([tf.constant(g)])
        np.testing.assert_allclose(var.numpy(), want, rtol=1e-9, atol=1e-12, err_msg=f"step {step}")
    assert int(opt.iterations.numpy()) == len(grads)
    # the first step moves every coordinate by about lr, whatever the gradient's scale (|g| >> eps)
    first = Adam([tf.Variable(theta0)], lr=lr)
    first.apply([tf.constant(grads[0])])
    np.testing.assert_allclose(np.abs(first.variables_[0].numpy() - theta0), lr, rtol=1e-2)


def test_adam_matches_keras_adam_over_steps():
    # float64 variables; Keras keeps β1, β2 in float32 (1 − β2 off by 1.3e-5 relative, so its
    # steps by ~7e-6): the tolerance covers that, not a different update rule (the exact check
    # of the rule is test_adam_matches_kingma_ba_over_steps)
    theta0 = np.array([[0.5, -1.0], [2.0, 0.0], [-0.3, 0.7]], np.float64)
    grads = _grads()
    mine = tf.Variable(theta0)
    ref = tf.Variable(theta0)
    opt = Adam([mine], lr=0.05)
    keras_opt = tf.keras.optimizers.Adam(learning_rate=0.05, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    for step, g in enumerate(grads, 1):
        opt.apply([tf.constant(g)])
        keras_opt.apply_gradients([(tf.constant(g), ref)])
        np.testing.assert_allclose(mine.numpy() - theta0, ref.numpy() - theta0, rtol=2e-5,
                                   err_msg=f"step {step}")
    assert not np.allclose(mine.numpy(), theta0)
