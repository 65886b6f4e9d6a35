"""The Gauss-Newton inner solver of the user row, cold-start tasks and supervised pre-training."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from limaml.config import MamlConfig, ModelConfig
from tests.test_trainer_maml import VOCABS, T, check_meta_gradient, make_batch, masked_bce_by_hand
from trainer import maml
from trainer.layout import build_layout
from trainer.model import USER_ROW, LimamlModel, global_forward, meta_forward

D_ROW = 3


def newton_model(steps=1, precision=2.0, cold_share=0.0, seed=0):
    mcfg = ModelConfig(meta_hidden=(3,), embedding_dim=2, global_hidden=(4,),
                       categorical_embedding_dim=2, activation="tanh", user_id_buckets=8,
                       user_id_embedding_dim=D_ROW, user_id_dropout=0.0, interaction="dot",
                       wide=True)
    mm = MamlConfig(inner_lr=0.3, adaptation_steps=steps, support_shrinkage=0.0,
                    support_sampling="none", outer_l2=0.0, inner_solver="gauss_newton",
                    row_prior_precision=precision, cold_task_share=cold_share)
    model = LimamlModel(build_layout(mcfg, VOCABS), mcfg, mm, seed=seed, dtype=tf.float64)
    model.user_emb.assign(np.random.RandomState(seed + 7).normal(0, 0.5, model.user_emb.shape))
    return model


def map_objective(logits, labels, mask, row, row0, lam):
    """Σ_s m_s bce(y_s, z_s) + ½ Σ_d λ_d (r_d − r0_d)², by hand (numpy)."""
    bce = np.logaddexp(0.0, logits) - labels * logits
    return float(np.sum(mask * bce) + 0.5 * np.sum(lam * (row - row0) ** 2))


def test_gauss_newton_steps_reach_the_map_of_a_linear_logit_model():
    # logit_s = a_s + J_s · r: Gauss-Newton is Newton's method, so a few steps reach the MAP,
    # where the finite-difference gradient of the objective vanishes.
    rng = np.random.RandomState(0)
    tasks, s, d = 4, 6, 3
    a = rng.normal(0, 1, (tasks, s))
    jac = rng.normal(0, 1, (tasks, s, d))
    y = (rng.rand(tasks, s) < 0.5).astype(np.float64)
    mask = (np.arange(s)[None, :] < np.array([6, 3, 1, 0])[:, None]).astype(np.float64)
    row0 = rng.normal(0, 0.3, (tasks, d))
    lam = np.array([0.5, 1.0, 2.0])
    part = {"label": tf.constant(y), "mask": tf.constant(mask)}
    row = tf.constant(row0)
    for _ in range(8):
        logits = tf.constant(a) + tf.einsum("tsd,td->ts", tf.constant(jac), row)
        row = maml.gauss_newton_row_step(row, tf.constant(row0), logits, tf.constant(jac), part,
                                         tf.constant(lam))
    r = row.numpy()
    eps = 1e-6
    for t in range(tasks):
        def f(rt, t=t):
            return map_objective(a[t] + jac[t] @ rt, y[t], mask[t], rt, row0[t], lam)
        grad = [(f(r[t] + eps * e) - f(r[t] - eps * e)) / (2 * eps) for e in np.eye(d)]
        np.testing.assert_allclose(grad, 0.0, atol=1e-6)
        assert f(r[t]) <= f(row0[t]) + 1e-12
    np.testing.assert_allclose(r[3], row0[3])  # no support rows: the prior mean


def test_adapt_takes_the_gauss_newton_step_with_finite_difference_jacobians():
    model = newton_model(steps=1, precision=2.0)
    batch = make_batch()
    s = batch["support"]
    adapted = maml.adapt(model, s, 1)
    row0 = model.user_emb.numpy()[s["user_hash"].numpy()[:, 0]]
    x = model.meta_x(s)
    base = {k: v for k, v in maml.tile_params(model.meta_params, T).items()}

    def logits_at(rows):
        return maml.set_logits(model, dict(base, **{USER_ROW: tf.constant(rows)}),
                               model.global_params, x, s).numpy()

    z = logits_at(row0)
    eps = 1e-6
    jac = np.stack([(logits_at(row0 + eps * e) - logits_at(row0 - eps * e)) / (2 * eps)
                    for e in np.eye(D_ROW)], axis=-1)                     # [T, S, d]
    y, m = s["label"].numpy(), s["mask"].numpy()
    p = 1.0 / (1.0 + np.exp(-z))
    lam = np.full(D_ROW, 2.0)
    for t in range(T):
        g = jac[t].T @ (m[t] * (p[t] - y[t]))
        h = (jac[t] * (m[t] * p[t] * (1 - p[t]))[:, None]).T @ jac[t] + np.diag(lam)
        np.testing.assert_allclose(adapted[USER_ROW].numpy()[t], row0[t] - np.linalg.solve(h, g),
                                   rtol=1e-6, atol=1e-8)


def test_meta_gradient_through_gauss_newton_steps_matches_finite_differences():
    model = newton_model(steps=2, precision=1.5)
    batch = make_batch()
    checked, _, _ = check_meta_gradient(model, batch, per_variable=6, seed=5)
    assert any(v is model.row_log_precision for v in model.outer_variables())
    assert checked > 40


def test_gauss_newton_needs_a_user_row():
    mcfg = ModelConfig(user_id_embedding_dim=0)
    with pytest.raises(ValueError, match="user_id_embedding_dim"):
        LimamlModel(build_layout(mcfg, VOCABS), mcfg, MamlConfig(inner_solver="gauss_newton"))
    with pytest.raises(ValueError, match="inner_solver"):
        MamlConfig(inner_solver="newton")


def test_cold_tasks_score_the_query_with_the_zero_row_and_no_adaptation():
    model = newton_model(steps=2, cold_share=0.999999)
    batch = make_batch()
    loss, per_task = maml.maml_loss(model, batch)
    q = batch["query"]
    params = dict(model.meta_params)
    params[USER_ROW] = tf.zeros(list(q["user_hash"].shape) + [D_ROW], tf.float64)
    emb = meta_forward(params, model.meta_x(q), "tanh")
    z = global_forward(model.global_params, emb, q, model.layout, model.model_cfg).numpy()
    expected = masked_bce_by_hand(z, q, axis=1)
    np.testing.assert_allclose(per_task.numpy(), expected, rtol=1e-10)
    # evaluation (training=False) never drops the support
    _, warm = maml.maml_loss(model, batch, training=False)
    assert not np.allclose(warm.numpy(), expected)


def test_pretrain_loss_is_the_row_mean_bce_with_table_rows_and_a_step_lowers_it():
    model = newton_model(seed=1)  # no id dropout: the loss is deterministic
    batch = make_batch()
    q = batch["query"]
    expected = masked_bce_by_hand(model.logits(q).numpy(), q)
    assert float(maml.pretrain_loss(model, batch)) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="pretrain_lr"):
        maml.MamlTrainer(model).pretrain_step(batch)
    trainer = maml.MamlTrainer(model, pretrain_lr=0.01)
    for _ in range(5):
        trainer.pretrain_step(batch)
    assert float(maml.pretrain_loss(model, batch)) < expected
    # the solver's own parameters are not pre-trained
    assert float(tf.reduce_max(tf.abs(model.row_log_precision - np.log(2.0)))) == 0.0
