"""The personalization parts of the model: user-id rows in the meta block (sparse adaptation,
dropout, L2), the explicit dot interaction and the wide part of the global block."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from limaml.config import MamlConfig, ModelConfig
from tests.test_trainer_maml import VOCABS, T, check_meta_gradient, make_batch
from trainer import finetune, maml
from trainer.layout import build_layout
from trainer.model import USER_ROW, LimamlModel, dot_interaction, meta_forward, wide_logit

D_ROW = 3


def personal_model(steps=2, first_order=False, dropout=0.0, l2=0.0, interaction="dot", wide=True,
                   inner_lr=0.3, user_row_lr=None, seed=0, shrinkage=4.0, history_dim=0,
                   history_labels=True):
    mcfg = ModelConfig(meta_hidden=(3,), embedding_dim=2, global_hidden=(4,),
                       categorical_embedding_dim=2, activation="tanh", user_id_buckets=8,
                       user_id_embedding_dim=D_ROW, user_id_dropout=dropout, user_id_l2=l2,
                       interaction=interaction, wide=wide, history_dim=history_dim,
                       history_labels=history_labels)
    mm = MamlConfig(inner_lr=inner_lr, adaptation_steps=steps, first_order=first_order,
                    user_row_lr=user_row_lr, support_shrinkage=shrinkage, support_sampling="none",
                    outer_l2=0.0)
    model = LimamlModel(build_layout(mcfg, VOCABS), mcfg, mm, seed=seed, dtype=tf.float64)
    rng = np.random.RandomState(seed + 7)
    # non-zero rows and wide weights so that every term takes part in the checks
    model.user_emb.assign(rng.normal(0, 0.5, model.user_emb.shape))
    for k, v in model.global_params.items():
        if k.startswith("wide_"):
            v.assign(rng.normal(0, 0.3, v.shape))
    return model


@pytest.mark.parametrize("history_dim", [0, 2])
def test_meta_gradient_with_user_rows_dot_and_wide_matches_finite_differences(history_dim):
    model = personal_model(steps=2, l2=0.05, history_dim=history_dim)
    batch = make_batch()
    checked, grads, unused = check_meta_gradient(model, batch, per_variable=10, seed=3,
                                                 user_rows="used+unused")
    assert checked > 60
    idx = next(i for i, v in enumerate(model.outer_variables()) if v is model.user_emb)
    assert np.all(tf.convert_to_tensor(grads[idx]).numpy()[unused] == 0.0)  # sparse: unused row


@pytest.mark.parametrize("kappa", [0.0, 4.0])
def test_inner_loop_adapts_only_each_tasks_own_row_by_its_support_gradient(kappa):
    model = personal_model(steps=1, user_row_lr=0.7, shrinkage=kappa)
    batch = make_batch()
    s = batch["support"]
    table_before = model.user_emb.numpy().copy()
    adapted = maml.adapt(model, s, 1)
    np.testing.assert_array_equal(model.user_emb.numpy(), table_before)  # nothing assigned
    rows = table_before[s["user_hash"].numpy()[:, 0]]
    assert adapted[USER_ROW].shape == (T, D_ROW)
    x = model.meta_x(s)
    theta0 = maml.tile_params(model.meta_params, T)

    def support_loss(row_np):
        th = dict(theta0, **{USER_ROW: tf.constant(row_np)})
        return maml.set_loss(model, th, model.global_params, x, s).numpy()

    n = s["mask"].numpy().sum(1)
    rho = n / (n + kappa)  # support-size-aware step: n / (n + κ) of the full step
    eps = 1e-6
    for t in range(T):
        for c in range(D_ROW):
            e = np.zeros_like(rows)
            e[t, c] = eps
            fd = (support_loss(rows + e)[t] - support_loss(rows - e)[t]) / (2 * eps)
            assert adapted[USER_ROW].numpy()[t, c] == pytest.approx(rows[t, c] - 0.7 * rho[t] * fd,
                                                                    rel=1e-6)


def test_dot_interaction_and_wide_part_by_hand():
    model = personal_model()
    rng = np.random.RandomState(0)
    n = 5
    feats = {f: rng.randint(0, v, n) for f, v in VOCABS.items()}
    feats["genres"] = (rng.rand(n, 64) < 0.2).astype(np.float64)
    feats["release_year"] = rng.randn(n)
    e = rng.randn(n, 2)
    g = {k: v.numpy() for k, v in model.global_params.items()}
    expect_dot = np.sum((e @ g["dot_proj"]) * (g["emb_item_id"][feats["item_id"]]
                                               + feats["genres"] @ g["dot_genres"]), axis=1)
    tf_feats = {k: tf.constant(v) for k, v in feats.items()}
    got = dot_interaction(model.global_params, tf.constant(e), tf_feats, model.layout).numpy()
    np.testing.assert_allclose(got, expect_dot, rtol=1e-10)
    expect_wide = (g["wide_item_id"][feats["item_id"]] + feats["genres"] @ g["wide_genres"]
                   + feats["release_year"] * g["wide_numeric"][0])
    np.testing.assert_allclose(wide_logit(model.global_params, tf_feats, model.layout).numpy(),
                               expect_wide, rtol=1e-10)


def test_user_row_dropout_trains_on_the_zero_row():
    batch = make_batch()
    dropped = personal_model(dropout=0.999999)
    zero_rows = personal_model(dropout=0.0)
    zero_rows.user_emb.assign(tf.zeros_like(zero_rows.user_emb))
    a = float(maml.maml_loss(dropped, batch, training=True)[0])
    b = float(maml.maml_loss(zero_rows, batch, training=True)[0])
    c = float(maml.maml_loss(dropped, batch, training=False)[0])
    assert a == pytest.approx(b, rel=1e-12)
    assert abs(c - a) > 1e-6  # at evaluation the user's own row is used


def test_cold_start_uses_the_users_row_and_meg_matches_manual_adaptation():
    model = personal_model(steps=1)
    batch = make_batch()
    s = {k: v for k, v in batch["support"].items()}
    first = {k: v[:, 0] for k, v in s.items()}
    cold = finetune.cold_start_embedding(model, first).numpy()
    rows = model.user_emb.numpy()[first["user_hash"].numpy()]
    manual = meta_forward(dict(model.meta_params, **{USER_ROW: tf.constant(rows)}),
                          model.meta_x(first), "tanh").numpy()
    np.testing.assert_allclose(cold, manual, rtol=1e-10)
    with pytest.raises(ValueError, match="user-id embedding"):
        finetune.cold_start_embedding(model, model.meta_x(first))
    mask = s.pop("mask")
    emb = finetune.generate_meta_embeddings_fn(model, s, mask, "mean", 1).numpy()
    # MEG keeps users with fewer than meg_min_support rows at their table row
    adapted = maml.adapt(model, dict(s, mask=mask), 1, first_order=True,
                         min_support=model.maml_cfg.meg_min_support)
    per_sample = meta_forward(adapted, model.meta_x(s), "tanh").numpy()
    m = mask.numpy()[..., None]
    np.testing.assert_allclose(emb, (per_sample * m).sum(1) / m.sum(1), rtol=1e-8)


def test_meg_row_shrinkage_starts_each_user_from_its_row_scaled_by_n_over_n_plus_kappa():
    model = personal_model(steps=1)
    s = dict(make_batch()["support"])
    s["user_hash"] = tf.constant(np.repeat([[1], [2], [5]], s["mask"].shape[1], axis=1))
    mask = s.pop("mask")  # valid support rows per user: 4, 2, 3
    batch = {"support": dict(s, mask=mask), "query": make_batch()["query"]}
    loss_before = float(maml.maml_loss(model, batch, training=False)[0])
    full = finetune.generate_meta_embeddings_fn(model, s, mask, "mean", 1).numpy()
    shrunk = finetune.generate_meta_embeddings_fn(model, s, mask, "mean", 1,
                                                  row_shrinkage=2.0).numpy()
    # by hand: κ_r = 2 scales the rows by 4/6, 2/4 and 3/5, then MEG runs as without shrinkage
    # (user 1 has fewer than meg_min_support = 3 rows: its un-adapted output, scaled row)
    table = model.user_emb.numpy().copy()
    scaled = table.copy()
    scaled[[1, 2, 5]] = table[[1, 2, 5]] * np.array([4 / 6, 2 / 4, 3 / 5])[:, None]
    model.user_emb.assign(scaled)
    expected = finetune.generate_meta_embeddings_fn(model, s, mask, "mean", 1).numpy()
    model.user_emb.assign(table)
    np.testing.assert_allclose(shrunk, expected, rtol=1e-10)
    for u in range(3):
        assert not np.allclose(shrunk[u], full[u]), u  # every user's row moved
    # the setting is MEG's only: meta-training's loss does not read it
    model.maml_cfg = dataclasses.replace(model.maml_cfg, meg_row_shrinkage=2.0)
    np.testing.assert_allclose(finetune.generate_meta_embeddings_fn(
        model, s, mask, "mean", 1).numpy(), shrunk, rtol=1e-12)  # the model's setting is used
    assert float(maml.maml_loss(model, batch, training=False)[0]) == loss_before


def test_meg_row_shrinkage_must_not_be_negative():
    with pytest.raises(ValueError, match="meg_row_shrinkage -1"):
        MamlConfig(meg_row_shrinkage=-1)


def test_support_sampling_keeps_a_log_uniform_suffix_of_each_support():
    tasks, width = 20000, 40
    n = np.array([32, 5, 1, 0] * (tasks // 4))
    mask = (np.arange(width)[None, :] < n[:, None]).astype(np.float32)
    tf.random.set_seed(0)
    cut = maml.sample_support_sizes({"mask": tf.constant(mask)})["mask"].numpy()
    k = cut.sum(axis=1)
    assert np.all(cut <= mask)
    assert np.all(k[n == 0] == 0) and np.all(k[n == 1] == 1)
    assert np.all((k[n > 0] >= 1) & (k[n > 0] <= n[n > 0]))
    # the kept rows are the latest k of the valid prefix: positions n-k .. n-1
    for row, nn, kk in zip(cut[:200], n[:200], k[:200]):
        np.testing.assert_array_equal(np.flatnonzero(row), np.arange(nn - kk, nn))
    # k = floor((n+1)^u): P(k <= j) = log(j+1)/log(n+1)
    k32 = k[n == 32]
    for j in (1, 4, 16):
        assert np.mean(k32 <= j) == pytest.approx(np.log(j + 1) / np.log(33), abs=0.02)
    assert np.mean(k[n == 5] == 5) == pytest.approx(1 - np.log(5) / np.log(6), abs=0.02)


def test_support_sampling_applies_in_training_only():
    batch = make_batch()
    model = personal_model(steps=1)
    model.maml_cfg = dataclasses.replace(model.maml_cfg, support_sampling="log_uniform")
    full = float(maml.maml_loss(model, batch, training=False)[0])
    plain = personal_model(steps=1)
    assert full == pytest.approx(float(maml.maml_loss(plain, batch, training=False)[0]), rel=1e-12)
    tf.random.set_seed(1)
    sampled = [float(maml.maml_loss(model, batch, training=True)[0]) for _ in range(5)]
    assert max(abs(s - full) for s in sampled) > 1e-6


def test_frozen_wide_part_keeps_its_warm_start():
    mcfg = ModelConfig(meta_hidden=(3,), embedding_dim=2, global_hidden=(4,),
                       categorical_embedding_dim=2, user_id_buckets=8, user_id_embedding_dim=D_ROW,
                       wide=True, wide_trainable=False)
    model = LimamlModel(build_layout(mcfg, VOCABS), mcfg, MamlConfig(support_sampling="none"),
                        seed=0, dtype=tf.float64)
    trained = {id(v) for v in model.outer_variables()}
    wide = {k: v for k, v in model.global_params.items() if k.startswith("wide_")}
    assert wide and not any(id(v) in trained for v in wide.values())
    assert id(model.global_params["w_out"]) in trained
    before = {k: v.numpy().copy() for k, v in model.global_params.items()}
    maml.MamlTrainer(model).train_step(make_batch())
    for k in wide:
        np.testing.assert_array_equal(model.global_params[k].numpy(), before[k])
    assert not np.array_equal(model.global_params["w_out"].numpy(), before["w_out"])


def test_history_summary_by_hand():
    model = personal_model(history_dim=2)
    h = np.arange(10, dtype=np.float64).reshape(5, 2) / 10.0  # item i -> [0.2 i, 0.2 i + 0.1]
    model.history_emb.assign(h)
    genres = np.zeros((1, 3, 64))
    genres[0, 0, 5] = genres[0, 1, 7] = genres[0, 2, 9] = 1.0
    support = {"item_id": tf.constant([[4, 1, 3]]), "genres": tf.constant(genres),
               "label": tf.constant([[1.0, 0.0, 1.0]]), "mask": tf.constant([[1.0, 1.0, 0.0]])}
    got = model.history_vector(support).numpy()
    # one valid positive (item 4, genre 5) and one negative (item 1, genre 7); the third row is
    # padding: each mean is its row over (1 + 1)
    pos_g, neg_g = np.zeros(64), np.zeros(64)
    pos_g[5], neg_g[7] = 0.5, 0.5
    expect = np.concatenate([[0.4, 0.45], pos_g, [0.1, 0.15], neg_g])
    np.testing.assert_allclose(got[0], expect, rtol=1e-12)
    # train and serve alike: the meta input of a task's samples carries its summary; cold: zeros
    x = model.meta_x({k: tf.constant(np.zeros((1, 2), np.int64)) for k in
                      ("age_bucket", "gender", "occupation", "zip_prefix")}, model.history_vector(support))
    np.testing.assert_allclose(x.numpy()[0, 1, -expect.size:], expect, rtol=1e-12)
    cold = model.meta_x({k: tf.constant(np.zeros((1,), np.int64)) for k in
                         ("age_bucket", "gender", "occupation", "zip_prefix")})
    assert cold.shape[-1] == x.shape[-1] and np.all(cold.numpy()[0, -expect.size:] == 0)


def test_implicit_history_summary_by_hand():
    """``history_labels=False``: one shrunk mean over the valid rows, whatever their labels."""
    model = personal_model(history_dim=2, history_labels=False)
    model.history_emb.assign(np.arange(10, dtype=np.float64).reshape(5, 2) / 10.0)
    genres = np.zeros((1, 3, 64))
    genres[0, 0, 5] = genres[0, 1, 7] = genres[0, 2, 9] = 1.0
    support = {"item_id": tf.constant([[4, 1, 3]]), "genres": tf.constant(genres),
               "label": tf.constant([[1.0, 0.0, 1.0]]), "mask": tf.constant([[1.0, 1.0, 0.0]])}
    got = model.history_vector(support).numpy()
    # items 4 ([0.8, 0.9]) and 1 ([0.2, 0.3]), genres 5 and 7; the padded row is left out:
    # their sum over (1 + 2)
    g = np.zeros(64)
    g[5] = g[7] = 1.0 / 3.0
    np.testing.assert_allclose(got[0], np.concatenate([[1.0 / 3.0, 1.2 / 3.0], g]), rtol=1e-12)


def test_outer_l2_adds_two_lambda_w_to_global_tables_and_user_rows_but_not_biases_or_meta():
    """``outer_l2`` λ: the meta-gradient gains exactly 2λw on the global weights/tables and on
    every user row (used or not), and nothing on biases or the meta block (hand-derived)."""
    lam = 0.03
    model = personal_model(steps=1)
    batch = make_batch()
    plain = [None if g is None else g.numpy() for g in maml.MamlTrainer(model).meta_gradients(batch)[1]]
    l2_cfg = dataclasses.replace(model.maml_cfg, outer_l2=lam)
    penal = [None if g is None else g.numpy()
             for g in maml.MamlTrainer(model, l2_cfg).meta_gradients(batch)[1]]
    names = {id(v): k for k, v in model.global_params.items()}
    checked = set()
    for var, g0, g1 in zip(model.outer_variables(), plain, penal):
        key = "user_emb" if var is model.user_emb else names.get(id(var), "meta")
        g0 = np.zeros(var.shape) if g0 is None else g0
        shrunk = key == "user_emb" or (key != "meta" and not key.startswith("b"))
        expected = g0 + 2 * lam * var.numpy() if shrunk else g0
        np.testing.assert_allclose(g1, expected, rtol=1e-10, atol=1e-12, err_msg=key)
        checked.add("shrunk" if shrunk else "free")
    assert checked == {"shrunk", "free"}
    with pytest.raises(ValueError, match="outer_l2"):
        MamlConfig(outer_l2=-1.0)


def test_tasks_below_user_id_min_support_adapt_from_the_zero_row():
    """make_batch's supports hold 4, 2 and 3 rows. With a minimum of 3, task 1 (2 rows) must
    score exactly as if its user's table row were 0 and send no gradient to that row; tasks 0
    and 2 keep their rows (planted non-zero by personal_model)."""
    users = np.array([1, 4, 6])  # each task its own row
    batch = {p: dict(d, user_hash=tf.constant(np.repeat(users[:, None], d["label"].shape[1], 1)))
             for p, d in make_batch().items()}

    def per_task(min_support, zero_users=()):
        model = personal_model(steps=1)
        model.model_cfg = dataclasses.replace(model.model_cfg, user_id_min_support=min_support)
        table = model.user_emb.numpy()
        table[list(zero_users)] = 0.0
        model.user_emb.assign(table)
        with tf.GradientTape() as tape:
            loss, tasks = maml.maml_loss(model, batch, training=False)
        return tasks.numpy(), tape.gradient(loss, model.user_emb)

    gated, grad = per_task(3)
    by_hand, _ = per_task(0, zero_users=[users[1]])
    untouched, _ = per_task(0)
    np.testing.assert_allclose(gated, by_hand, rtol=1e-12)
    assert abs(gated[1] - untouched[1]) > 1e-6  # the row mattered before the gate
    g = tf.convert_to_tensor(grad).numpy()
    assert np.all(g[users[1]] == 0.0) and np.abs(g[users[0]]).max() > 0
    with pytest.raises(ValueError, match="user_id_min_support"):
        ModelConfig(user_id_min_support=-1)


def test_lazy_adam_moves_only_rows_with_a_gradient_and_keeps_the_others_moments():
    table0 = np.array([[0.5, -0.2], [0.1, 0.3], [-0.4, 0.2], [0.2, 0.2]])
    g1 = np.array([[0.0, 0.0], [0.02, -0.5], [0.0, 0.0], [-3.0, 0.1]])  # rows 1, 3 in batch
    g2 = np.array([[0.1, 0.1], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])     # then only row 0
    out = {}
    for lazy in (False, True):
        var = tf.Variable(table0)
        opt = maml.Adam([var], lr=0.01, lazy=[var] if lazy else [])
        opt.apply([tf.constant(g1)])
        after1 = var.numpy().copy()
        moments1 = opt.m[0].numpy().copy(), opt.v[0].numpy().copy()
        opt.apply([tf.constant(g2)])
        out[lazy] = after1, var.numpy(), moments1, (opt.m[0].numpy(), opt.v[0].numpy())
    # first Adam step, t = 1: m = 0.1 g, v = 0.001 g², lr_t = lr √0.001 / 0.1, so each entry
    # moves by lr · g / (|g| + ε / √0.001), about lr · sign(g)
    expected1 = table0 - 0.01 * g1 / (np.abs(g1) + 1e-7 / np.sqrt(0.001))
    for lazy in (False, True):
        np.testing.assert_allclose(out[lazy][0], expected1, atol=1e-8)
    lazy_after2, dense_after2 = out[True][1], out[False][1]
    # step 2 touches row 0 only: lazy leaves rows 1-3 and their moments as they were
    np.testing.assert_array_equal(lazy_after2[1:], out[True][0][1:])
    for now, before in zip(out[True][3], out[True][2]):
        np.testing.assert_array_equal(now[1:], before[1:])
    # dense Adam keeps moving rows 1 and 3 on their momentum
    assert np.all(np.abs(dense_after2[[1, 3]] - out[False][0][[1, 3]]) > 1e-4)
    np.testing.assert_allclose(lazy_after2[0], dense_after2[0], rtol=1e-12)


def test_lazy_user_rows_put_the_l2_gradient_on_the_batch_rows_only():
    batch = make_batch()
    used = sorted(set(batch["support"]["user_hash"].numpy()[:, 0].tolist()))
    grads = {}
    for lazy in (False, True):
        model = personal_model(steps=1)
        model.maml_cfg = dataclasses.replace(model.maml_cfg, outer_l2=0.01, lazy_user_rows=lazy)
        trainer = maml.MamlTrainer(model)
        idx = next(i for i, v in enumerate(model.outer_variables()) if v is model.user_emb)
        grads[lazy] = tf.convert_to_tensor(trainer.meta_gradients(batch)[1][idx]).numpy()
        table = model.user_emb.numpy()
    unused = [r for r in range(table.shape[0]) if r not in used]
    np.testing.assert_allclose(grads[True][used], grads[False][used], rtol=1e-12)
    np.testing.assert_allclose(grads[False][unused], 2 * 0.01 * table[unused], rtol=1e-12)
    assert np.all(grads[True][unused] == 0.0)


def test_outer_l2_loss_adds_lambda_sum_of_squares_of_the_penalised_weights():
    """The reported loss with ``outer_l2`` λ is the plain loss plus λ Σ w² over the global
    weights/tables and the whole user table (numpy), not over biases or the meta block."""
    lam = 0.03
    model = personal_model(steps=1)
    batch = make_batch()
    plain = float(maml.MamlTrainer(model).meta_gradients(batch)[0])
    penal = float(maml.MamlTrainer(model, dataclasses.replace(model.maml_cfg, outer_l2=lam))
                  .meta_gradients(batch)[0])
    squares = np.sum(model.user_emb.numpy() ** 2) + sum(
        np.sum(v.numpy() ** 2) for k, v in model.global_params.items() if not k.startswith("b"))
    assert squares > 0.1
    np.testing.assert_allclose(penal - plain, lam * squares, rtol=1e-9)


def test_user_rows_are_gathered_from_a_dense_read_of_the_table():
    """``ResourceGather`` on the user table would switch it to copy-on-read, after which every
    dense read (penalty, Adam) copies the whole table: the meta-training step must gather from
    a read of it instead."""
    model = personal_model(steps=1)
    model.maml_cfg = dataclasses.replace(model.maml_cfg, outer_l2=0.01)
    trainer = maml.MamlTrainer(model)
    graph = trainer._step_fn.get_concrete_function(make_batch()).graph
    table = next(inner for outer, inner in graph.captures if outer is model.user_emb.handle)
    readers = {op.type for op in graph.get_operations() if any(t is table for t in op.inputs)}
    assert "ReadVariableOp" in readers and "ResourceGather" not in readers, readers
