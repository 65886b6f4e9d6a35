"""Correctness of the batched MAML inner/outer loop, aggregation and MEG (float64, tiny model)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from limaml.config import MamlConfig, ModelConfig
from trainer import finetune, maml
from trainer.layout import build_layout
from trainer.model import LimamlModel, meta_forward, meta_input

VOCABS = {"item_id": 5, "age_bucket": 3, "gender": 2, "occupation": 3, "zip_prefix": 2}
T, S, Q = 3, 4, 3


def tiny_model(steps=2, first_order=False, learn_inner_lr=False, aggregation=None,
               inner_lr=0.3, use_cross=False, seed=0):
    mcfg = ModelConfig(meta_hidden=(3,), embedding_dim=2, global_hidden=(4,),
                       categorical_embedding_dim=2, activation="tanh", use_cross=use_cross,
                       cross_layers=1, user_id_buckets=8, use_user_id_in_meta=True,
                       user_id_embedding_dim=0)
    # plain MAML (no id rows, full inner step); tests/test_trainer_personalization.py covers those
    mm = MamlConfig(inner_lr=inner_lr, adaptation_steps=steps, first_order=first_order,
                    learn_inner_lr=learn_inner_lr, train_aggregation=aggregation,
                    support_shrinkage=0.0, user_row_lr=None, support_sampling="none",
                    outer_l2=0.0)
    layout = build_layout(mcfg, VOCABS)
    return LimamlModel(layout, mcfg, mm, seed=seed, dtype=tf.float64)


def make_part(rng, n, mask_lens):
    d = {f: rng.randint(0, v, size=(T, n)) for f, v in VOCABS.items()}
    d["genres"] = (rng.rand(T, n, 64) < 0.1).astype(np.float32)
    d["release_year"] = rng.randn(T, n).astype(np.float32)
    d["user_hash"] = np.repeat(rng.randint(0, 8, size=(T, 1)), n, axis=1)
    d["label"] = rng.randint(0, 2, size=(T, n)).astype(np.float32)
    d["mask"] = (np.arange(n)[None, :] < np.asarray(mask_lens)[:, None]).astype(np.float32)
    return d


def make_batch(seed=0):
    rng = np.random.RandomState(seed)
    b = {"support": make_part(rng, S, [4, 2, 3]), "query": make_part(rng, Q, [3, 1, 2])}
    return {p: {k: tf.constant(v) for k, v in d.items()} for p, d in b.items()}


def assert_gradient_matches_finite_differences(var, grad, loss_fn, picks, eps=1e-6) -> int:
    """Central differences of ``loss_fn`` w.r.t. the flat entries ``picks`` of ``var`` equal
    ``grad`` (None = zero); restores ``var``; returns how many entries were checked."""
    g = np.zeros(var.shape) if grad is None else tf.convert_to_tensor(grad).numpy()
    base = var.numpy()
    for i in picks:
        e = np.zeros(base.size)
        e[i] = eps
        e = e.reshape(base.shape)
        var.assign(base + e)
        lp = float(loss_fn())
        var.assign(base - e)
        lm = float(loss_fn())
        var.assign(base)
        assert g.reshape(-1)[i] == pytest.approx((lp - lm) / (2 * eps), rel=1e-4, abs=1e-8), (
            var.name, i)
    return len(picks)


def check_meta_gradient(model, batch, per_variable, seed, user_rows="used"):
    """Checks ``MamlTrainer.meta_gradients`` against finite differences of ``outer_loss`` on up to
    ``per_variable`` random entries of every outer variable. ``user_rows``: for the user-id
    table, ``"used"`` (every entry of the batch's rows), ``"used+unused"`` (and of one row no
    task uses) or ``"skip"``. Returns ``(entries checked, gradients, unused row ids)``."""
    _, grads = maml.MamlTrainer(model).meta_gradients(batch)
    loss_fn = tf.function(lambda: maml.outer_loss(model, batch))
    rng = np.random.RandomState(seed)
    checked, unused = 0, []
    for var, g in zip(model.outer_variables(), grads):
        if var is getattr(model, "user_emb", None):
            if user_rows == "skip":
                continue
            d = var.shape[1]
            used = sorted(set(batch["support"]["user_hash"].numpy()[:, 0].tolist()))
            if user_rows == "used+unused":
                unused = [r for r in range(var.shape[0]) if r not in used][:1]
            picks = [r * d + c for r in used + unused for c in range(d)]
        else:
            flat = np.arange(int(np.prod(var.shape)))
            picks = flat if flat.size <= per_variable else rng.choice(flat, per_variable, replace=False)
        checked += assert_gradient_matches_finite_differences(var, g, loss_fn, picks)
    return checked, grads, unused


def masked_bce_by_hand(logits, part, axis=None):
    """Masked mean binary cross-entropy (numpy): over every valid position (``axis=None``) or
    per task (``axis=1``)."""
    z = np.asarray(logits)
    y, m = part["label"].numpy(), part["mask"].numpy()
    bce = (np.logaddexp(0.0, z) - y * z) * m
    return bce.sum(axis) / m.sum(axis)


def loss_value(model, batch):
    return float(maml.maml_loss(model, batch)[0])


@pytest.mark.parametrize("kwargs", [
    dict(steps=2),
    dict(steps=1, learn_inner_lr=True, use_cross=True),
    dict(steps=2, aggregation="mean"),
])
def test_second_order_meta_gradient_matches_finite_differences(kwargs):
    model = tiny_model(**kwargs)
    batch = make_batch()
    trainer = maml.MamlTrainer(model)
    _, grads = trainer.meta_gradients(batch)
    loss_fn = tf.function(lambda: maml.outer_loss(model, batch))
    rng = np.random.RandomState(1)
    checked = 0
    for var, g in zip(model.outer_variables(), grads):
        flat = np.arange(int(np.prod(var.shape)))
        picks = flat if flat.size <= 12 else rng.choice(flat, 12, replace=False)
        checked += assert_gradient_matches_finite_differences(var, g, loss_fn, picks)
    assert checked > 50


def test_second_order_differs_from_first_order():
    batch = make_batch()
    g2 = maml.MamlTrainer(tiny_model(first_order=False)).meta_gradients(batch)[1]
    g1 = maml.MamlTrainer(tiny_model(first_order=True)).meta_gradients(batch)[1]
    assert max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(g1, g2) if a is not None) > 1e-6


def test_first_order_gradient_equals_query_gradient_at_adapted_params():
    model = tiny_model(steps=2, first_order=True)
    batch = make_batch()
    _, grads = maml.MamlTrainer(model).meta_gradients(batch)
    adapted = maml.adapt(model, batch["support"], 2)
    theta = {k: tf.Variable(v) for k, v in adapted.items()}
    with tf.GradientTape() as tape:
        q = batch["query"]
        emb = meta_forward(theta, meta_input(q, model.layout, tf.float64), "tanh")
        logits = maml.global_forward(model.global_params, emb, q, model.layout, model.model_cfg)
        per_task = maml.masked_task_loss(logits, q["label"], q["mask"])
        loss = tf.reduce_mean(per_task)  # every task has a valid query position
    names = model.meta_names
    gl = list(model.global_names)
    expected = tape.gradient(loss, [theta[k] for k in names]
                             + [model.global_params[k] for k in gl])
    for k, e, g in zip(names, expected[:len(names)], grads[:len(names)]):
        np.testing.assert_allclose(g.numpy(), tf.reduce_sum(e, axis=0).numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=k)
    for k, e, g in zip(gl, expected[len(names):], grads[len(names):]):
        np.testing.assert_allclose(g.numpy(), tf.convert_to_tensor(e).numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=k)


def test_zero_adaptation_steps_is_the_plain_model():
    model = tiny_model(steps=0)
    batch = make_batch()
    _, per_task = maml.maml_loss(model, batch)
    q = batch["query"]
    logits = model.logits(q).numpy()
    y, m = q["label"].numpy(), q["mask"].numpy()
    bce = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    expected = (bce * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(per_task.numpy(), expected, rtol=1e-10)


def test_one_step_lowers_every_task_support_loss():
    model = tiny_model(steps=1, inner_lr=0.05)
    batch = make_batch()
    s = batch["support"]
    x = model.meta_x(s)
    before = maml.set_loss(model, maml.tile_params(model.meta_params, T), model.global_params, x, s)
    adapted = maml.adapt(model, s, 1)
    after = maml.set_loss(model, adapted, model.global_params, x, s)
    assert np.all(after.numpy() < before.numpy())


def test_inner_loop_never_writes_a_variable_and_global_block_is_not_adapted():
    model = tiny_model(steps=3, learn_inner_lr=True)
    batch = make_batch()
    before = {v.name: v.numpy().copy() for v in model.trainable_variables}
    fn = tf.function(lambda b: maml.adapt(model, b["support"], 3))
    adapted = fn(batch)
    graph = fn.get_concrete_function(batch).graph
    writes = [op.type for op in graph.get_operations()
              if "Assign" in op.type or op.type.startswith("ResourceApply")
              or op.type.startswith("ResourceScatter")]
    assert writes == []
    for v in model.trainable_variables:
        np.testing.assert_array_equal(v.numpy(), before[v.name])
    assert set(adapted) == set(model.meta_names)  # only θ_meta adapts
    # adapted copies differ per task and from θ_meta
    w0 = adapted["w0"].numpy()
    assert w0.shape == (T,) + tuple(model.meta_params["w0"].shape)
    assert not np.allclose(w0[0], model.meta_params["w0"].numpy())
    # the query loss uses the un-adapted global variables: its gradient w.r.t. them is
    # the same whether or not we pass them explicitly
    loss_a = maml.maml_loss(model, batch)[0]
    assert np.isfinite(loss_a.numpy())


def test_batched_inner_loop_equals_per_task_loop():
    model = tiny_model(steps=3)
    batch = make_batch()
    batched = maml.adapt(model, batch["support"], 3)
    for t in range(T):
        one = {k: v[t:t + 1] for k, v in batch["support"].items()}
        single = maml.adapt(model, one, 3)
        for k in model.meta_names:
            np.testing.assert_allclose(batched[k][t].numpy(), single[k][0].numpy(), rtol=1e-12,
                                       atol=1e-14)


def test_aggregation_modes_match_hand_computation():
    rng = np.random.RandomState(3)
    emb = rng.randn(3, 5, 2)
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], np.float64)
    got = {a: maml.aggregate(tf.constant(emb), tf.constant(mask), a).numpy()
           for a in maml.AGGREGATIONS}
    np.testing.assert_allclose(got["latest"][0], emb[0, 2])
    np.testing.assert_allclose(got["latest"][1], emb[1, 0])
    np.testing.assert_allclose(got["mean"][0], emb[0, :3].mean(0))
    np.testing.assert_allclose(got["max"][0], emb[0, :3].max(0))
    np.testing.assert_allclose(got["max"][1], emb[1, 0])
    for a in maml.AGGREGATIONS:  # no valid position -> row 0 (the un-adapted fallback input)
        np.testing.assert_allclose(got[a][2], emb[2, 0])


def test_train_aggregation_uses_the_support_aggregate_for_every_query_sample():
    model = tiny_model(steps=1, aggregation="latest")
    batch = make_batch()
    adapted = maml.adapt(model, batch["support"], 1)
    emb = maml.query_embeddings(model, adapted, batch, "latest").numpy()
    s_emb = meta_forward(adapted, model.meta_x(batch["support"]), "tanh").numpy()
    last = batch["support"]["mask"].numpy().sum(1).astype(int) - 1
    for t in range(T):
        for q in range(Q):
            np.testing.assert_allclose(emb[t, q], s_emb[t, last[t]])


def test_generate_meta_embeddings_cold_users_and_hand_computation():
    model = tiny_model(steps=2, inner_lr=0.2)
    batch = make_batch()
    support = {k: v for k, v in batch["support"].items() if k != "mask"}
    mask = batch["support"]["mask"].numpy().copy()
    mask[1] = 0.0  # user 1 is cold
    out = finetune.generate_meta_embeddings(model, support, tf.constant(mask), "mean").numpy()
    assert out.shape == (T, 2)
    cold = finetune.cold_start_embedding(
        model, {k: v[:, 0] for k, v in support.items()}).numpy()
    np.testing.assert_allclose(out[1], cold[1], rtol=1e-12)
    # hand computation for user 0: two explicit gradient steps on its own support set
    one = {k: v[0:1] for k, v in batch["support"].items()}
    one["mask"] = tf.constant(mask[0:1])
    theta = {k: tf.identity(v)[None] for k, v in model.meta_params.items()}
    x = model.meta_x(one)
    for _ in range(2):
        with tf.GradientTape() as tape:
            tape.watch(list(theta.values()))
            loss = tf.reduce_sum(maml.set_loss(model, theta, model.global_params, x, one))
        g = tape.gradient(loss, theta)
        theta = {k: theta[k] - 0.2 * g[k] for k in theta}
    e = meta_forward(theta, x, "tanh").numpy()[0]
    expected = e[mask[0] > 0].mean(0)
    np.testing.assert_allclose(out[0], expected, rtol=1e-10)
    assert not np.allclose(out[0], cold[0])


def test_nan_loss_raises_naming_step_and_loss():
    model = tiny_model(steps=1)
    batch = make_batch()
    bad = {p: dict(d) for p, d in batch.items()}
    ry = bad["query"]["release_year"].numpy()
    ry[0, 0] = np.nan
    bad["query"]["release_year"] = tf.constant(ry)
    trainer = maml.MamlTrainer(model)
    trainer.train_step(batch)
    before = [v.numpy().copy() for v in model.outer_variables()]
    with pytest.raises(maml.NonFiniteLossError, match=r"step 2.*loss=nan"):
        trainer.train_step(bad)
    for v, b in zip(model.outer_variables(), before):
        np.testing.assert_array_equal(v.numpy(), b)  # no update applied


def test_outer_step_lowers_query_loss_and_learns_inner_lr():
    model = tiny_model(steps=1, learn_inner_lr=True)
    model_cfg = dataclasses.replace(model.maml_cfg, meta_lr=0.01)
    trainer = maml.MamlTrainer(model, model_cfg)
    batch = make_batch()
    lr0 = model.inner_lrs["w0"].numpy().copy()
    losses = [trainer.train_step(batch) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert not np.allclose(model.inner_lrs["w0"].numpy(), lr0)


MIRRORED_SCRIPT = r'''
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
from test_trainer_maml import tiny_model, make_batch
from trainer import maml
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
batch = make_batch()
ref = tiny_model(steps=1)
ref_trainer = maml.MamlTrainer(ref)
with strategy.scope():
    model = tiny_model(steps=1)
    trainer = maml.MamlTrainer(model, strategy=strategy)
double = {p: {k: tf.concat([v, v], 0) for k, v in d.items()} for p, d in batch.items()}
ds = tf.data.Dataset.from_tensors(double).unbatch().batch(6)
dist = iter(strategy.experimental_distribute_dataset(ds))
assert abs(trainer.train_step(next(dist)) - ref_trainer.train_step(batch)) < 1e-12
for a, b in zip(model.outer_variables(), ref.outer_variables()):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-9)
print("MIRRORED_OK", strategy.num_replicas_in_sync)
'''


def test_mirrored_strategy_step_equals_single_replica_step(tmp_path):
    """Two CPU replicas (MirroredStrategy) each see one copy of the batch: same update."""
    import os
    import subprocess
    import sys
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here),
                                                        os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, str(script), here], capture_output=True, text=True,
                         env=env, timeout=300)
    assert "MIRRORED_OK 2" in res.stdout, res.stderr[-3000:]



def test_adapt_min_support_keeps_few_row_tasks_at_their_unadapted_parameters():
    # support sizes are [4, 2, 3]: with min_support 3 task 1 stays at θ_0, tasks 0 and 2 adapt
    batch = make_batch()
    model = tiny_model(steps=2)
    free = maml.adapt(model, batch["support"], 2)
    gated = maml.adapt(model, batch["support"], 2, min_support=3)
    for k, v in model.meta_params.items():
        np.testing.assert_array_equal(gated[k].numpy()[1], v.numpy(), err_msg=k)
        assert not np.allclose(free[k].numpy()[1], v.numpy()), k  # it would have moved
        np.testing.assert_allclose(gated[k].numpy()[[0, 2]], free[k].numpy()[[0, 2]],
                                   rtol=1e-12, err_msg=k)


def test_meg_min_support_serves_the_unadapted_embedding_and_leaves_training_alone():
    batch = make_batch()
    model = tiny_model(steps=2)
    model.maml_cfg = dataclasses.replace(model.maml_cfg, meg_min_support=0)
    support = {k: v for k, v in batch["support"].items() if k != "mask"}
    mask = batch["support"]["mask"]
    free = finetune.generate_meta_embeddings(model, support, mask, "mean").numpy()
    loss_free = loss_value(model, batch)
    model.maml_cfg = dataclasses.replace(model.maml_cfg, meg_min_support=3)
    out = finetune.generate_meta_embeddings(model, support, mask, "mean").numpy()
    # user 1 (2 rows): the mean of the un-adapted block's outputs over its rows, by hand
    x = meta_input(support, model.layout, tf.float64).numpy()[1, :2]
    w0, b0, w1, b1 = (model.meta_params[k].numpy() for k in ("w0", "b0", "w1", "b1"))
    np.testing.assert_allclose(out[1], (np.tanh(x @ w0 + b0) @ w1 + b1).mean(0), rtol=1e-10)
    assert not np.allclose(free[1], out[1])
    np.testing.assert_allclose(out[[0, 2]], free[[0, 2]], rtol=1e-10)  # 4 and 3 rows: adapted
    assert loss_value(model, batch) == loss_free  # meta-training adapts every task


def test_meg_min_support_must_not_be_negative():
    with pytest.raises(ValueError, match="meg_min_support -1"):
        MamlConfig(meg_min_support=-1)


def test_recency_weights_by_hand():
    # valid rows first, in time order; a = number of valid rows after the row
    mask = tf.constant([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(maml.recency_weights(mask, 1.0).numpy(),
                               [[0.25, 0.5, 1.0, 0.0], [0.0, 0.5, 1.0, 0.0], [0.0] * 4])
    np.testing.assert_allclose(maml.recency_weights(mask, 2.0).numpy()[0],
                               [0.5, 2 ** -0.5, 1.0, 0.0])


def test_recency_weighted_inner_loop_equals_repeating_the_recent_rows():
    # halflife 1 weighs a task's rows 1:2:4 from oldest to latest, which is the plain mean loss
    # of a support holding the rows once, twice and four times (no shrinkage in tiny_model)
    rng = np.random.RandomState(3)
    support = make_part(rng, S, [2, 3, 1])
    copies = [[1, 2], [1, 2, 4], [1]]
    width = 7
    dup = {}
    for k, v in support.items():
        rows = []
        for t in range(T):
            idx = np.repeat(np.arange(len(copies[t])), copies[t])
            take = np.concatenate([idx, np.zeros(width - len(idx), dtype=int)])
            rows.append(v[t][take])
        dup[k] = np.stack(rows)
    dup["mask"] = (np.arange(width)[None, :] < np.array([3, 7, 1])[:, None]).astype(np.float32)
    model = tiny_model(steps=2)
    plain = maml.adapt(model, {k: tf.constant(v) for k, v in dup.items()}, 2)
    model.maml_cfg = dataclasses.replace(model.maml_cfg, support_recency_halflife=1.0)
    weighted = maml.adapt(model, {k: tf.constant(v) for k, v in support.items()}, 2)
    unweighted = tiny_model(steps=2)
    flat = maml.adapt(unweighted, {k: tf.constant(v) for k, v in support.items()}, 2)
    for k in plain:
        np.testing.assert_allclose(weighted[k].numpy(), plain[k].numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=k)
        assert not np.allclose(flat[k].numpy()[:2], plain[k].numpy()[:2]), k  # weights matter


def test_recency_halflife_must_not_be_negative():
    with pytest.raises(ValueError, match="support_recency_halflife -1"):
        MamlConfig(support_recency_halflife=-1)


def test_supervised_weight_adds_lambda_times_the_supervised_gradient():
    # the outer loss is linear in λ: g(λ) − g(0) must be λ · ∇ pretrain_loss (tiny_model has no
    # user rows, no dropout, full supports and no L2, so every term is deterministic)
    batch = make_batch()
    model = tiny_model(steps=1)
    loss0, g0 = maml.MamlTrainer(model).meta_gradients(batch)
    _, g_sup = maml.MamlTrainer(model, pretrain_lr=1e-3).pretrain_gradients(batch)
    sup = float(maml.pretrain_loss(model, batch))
    lam = 0.7
    model.maml_cfg = dataclasses.replace(model.maml_cfg, supervised_weight=lam)
    loss, g = maml.MamlTrainer(model).meta_gradients(batch)
    assert float(loss) == pytest.approx(float(loss0) + lam * sup, rel=1e-7)
    checked = 0
    for a, b, s in zip(g, g0, g_sup):
        if s is None:
            continue
        np.testing.assert_allclose(a.numpy() - b.numpy(), lam * s.numpy(), rtol=1e-6, atol=1e-9)
        checked += int(np.any(s.numpy() != 0))
    assert checked >= 4  # the global block's weights and the meta block's all feel it


def test_supervised_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="supervised_weight -0.5"):
        MamlConfig(supervised_weight=-0.5)


@pytest.mark.parametrize("use_cross", [False, True])
def test_meta_apart_first_layer_is_the_concatenated_layer(use_cross):
    """``global_forward(meta_apart=True)`` (e W[:E] + x W[E:]) is [e | x] W: same logits and
    the same gradients w.r.t. e and the first weight matrix, on [T, n] grids (float64)."""
    model = tiny_model(use_cross=use_cross)
    part = make_batch(3)["support"]
    rng = np.random.RandomState(4)
    emb = tf.constant(rng.randn(T, S, 2))
    w0 = model.global_params["w0"]
    out = {}
    for apart in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(emb)
            logits = maml.global_forward(model.global_params, emb, part, model.layout,
                                         model.model_cfg, meta_apart=apart)
            loss = tf.reduce_sum(tf.sin(logits))
        out[apart] = [logits.numpy()] + [g.numpy() for g in tape.gradient(loss, [emb, w0])]
    for a, b in zip(out[False], out[True]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
    assert np.abs(out[True][1]).min() > 0  # e's gradient is real, not a zero of both paths
