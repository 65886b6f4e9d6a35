"""The user × genre meta block: subtask supports by hand, isolation of genres, meta-gradient."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from limaml.config import MamlConfig, ModelConfig
from tests.test_trainer_maml import VOCABS, check_meta_gradient, make_batch, masked_bce_by_hand
from trainer import genre_block, maml
from trainer.layout import build_layout
from trainer.model import LimamlModel, global_forward, meta_forward


def genre_model(steps=1, seed=0, blocks=("user", "user_x_genre"), genre_row_buckets=0,
                meta_hidden=(3,), genre_hidden=(3,), genre_support_shrinkage=None,
                genre_inner_lr=None, genre_combine="concat"):
    mcfg = ModelConfig(meta_hidden=meta_hidden, genre_hidden=genre_hidden, embedding_dim=2, global_hidden=(4,),
                       categorical_embedding_dim=2, activation="tanh", user_id_buckets=8,
                       user_id_embedding_dim=3, meta_blocks=blocks,
                       genre_row_buckets=genre_row_buckets, genre_combine=genre_combine)
    mm = MamlConfig(inner_lr=0.3, adaptation_steps=steps, support_sampling="none", outer_l2=0.0,
                    genre_support_shrinkage=genre_support_shrinkage, genre_inner_lr=genre_inner_lr)
    return LimamlModel(build_layout(mcfg, VOCABS), mcfg, mm, seed=seed, dtype=tf.float64)


def one_hot_genres(buckets):
    """[T, n] genre buckets -> [T, n, 64] multi-hot (one genre per row)."""
    return tf.one_hot(tf.constant(buckets), 64, dtype=tf.float32)


def test_subtask_support_holds_exactly_the_earlier_rows_of_the_query_rows_genre():
    # one task, support rows (time order) with genres 3, 5, 3, 7 (last one padding)
    support = {"genres": one_hot_genres([[3, 5, 3, 7]]),
               "mask": tf.constant([[1.0, 1.0, 1.0, 0.0]]),
               "item_id": tf.constant([[10, 11, 12, 13]])}
    query_genres = tf.constant([[3, 7, 9]])
    sub = genre_block.subtask_supports(support, query_genres)
    np.testing.assert_array_equal(sub["mask"].numpy(), [[1, 0, 1, 0],   # genre 3: rows 0, 2
                                                        [0, 0, 0, 0],   # genre 7: only padding
                                                        [0, 0, 0, 0]])  # genre 9: none
    np.testing.assert_array_equal(sub["item_id"].numpy(), [[10, 11, 12, 13]] * 3)


def test_a_query_rows_genre_embedding_reads_only_support_rows_of_its_genre():
    model = genre_model(steps=2)
    batch = make_batch()
    s, q = dict(batch["support"]), dict(batch["query"])
    # task 0: support genres 1, 2, 1, 2; query genres 1, 2, 2
    s["genres"] = tf.concat([one_hot_genres([[1, 2, 1, 2]]), s["genres"][1:]], 0)
    q["genres"] = tf.concat([one_hot_genres([[1, 2, 2]]), q["genres"][1:]], 0)
    user_emb = tf.zeros(s["mask"].shape + (2,), tf.float64)

    def genre_embs(labels0):
        s2 = dict(s, label=tf.concat([tf.constant([labels0], tf.float32), s["label"][1:]], 0))
        return genre_block.query_genre_embeddings(model, s2, user_emb, q, 2).numpy()

    a = genre_embs([1.0, 0.0, 1.0, 0.0])
    b = genre_embs([1.0, 1.0, 1.0, 1.0])    # only genre-2 rows change
    np.testing.assert_allclose(a[0, 0], b[0, 0], rtol=1e-12)   # genre-1 query row: untouched
    assert np.abs(a[0, 1] - b[0, 1]).max() > 1e-6              # genre-2 query rows move
    np.testing.assert_allclose(a[1:], b[1:], rtol=1e-12)       # other tasks untouched


@pytest.mark.parametrize("rows,meta_hidden,combine,steps", [
    (0, (3,), "concat", 2), (16, (3,), "concat", 2), (0, (), "concat", 2), (16, (3,), "residual", 2),
    (16, (3,), "residual", 1), (16, (), "concat", 1)])  # one step: the shared first step
def test_meta_gradient_with_the_genre_block_matches_finite_differences(rows, meta_hidden, combine, steps):
    # meta_hidden (): a linear user block beside a genre block with a hidden layer (the defaults)
    model = genre_model(steps=steps, genre_row_buckets=rows, meta_hidden=meta_hidden, genre_combine=combine)
    if rows:  # non-zero (user, genre) rows, so that every path through them is exercised
        model.genre_user_emb.assign(tf.random.stateless_normal([rows, 3], seed=[4, 2], dtype=tf.float64))
    batch = make_batch()
    # user rows: covered by tests/test_trainer_personalization.py
    checked, _, _ = check_meta_gradient(model, batch, per_variable=8, seed=5, user_rows="skip")
    genre_vars = {id(v) for v in model.genre_params.values()}
    assert genre_vars <= {id(v) for v in model.outer_variables()} and len(genre_vars) == 4
    assert (model.genre_user_emb is not None) == bool(rows)
    if rows:
        assert id(model.genre_user_emb) in {id(v) for v in model.outer_variables()}
    assert checked > 50


def test_single_block_model_is_unchanged_by_the_option():
    one = genre_model(blocks=("user",))
    assert not one.genre_params and one.global_params["w0"].shape[0] == 2 + 2 + 64 + 1
    two = genre_model()
    assert two.global_params["w0"].shape[0] == 4 + 2 + 64 + 1  # [e_user, e_genre] = 2E


@pytest.mark.parametrize("rows,combine", [(0, "concat"), (16, "concat"), (16, "residual")])
def test_meg_genre_embeddings_equal_the_training_time_query_embeddings(rows, combine):
    from trainer import finetune

    model = genre_model(steps=2, genre_row_buckets=rows, genre_combine=combine)
    if rows:
        model.genre_user_emb.assign(tf.random.stateless_normal([rows, 3], seed=[7, 1], dtype=tf.float64))
    batch = make_batch()
    s, q = batch["support"], batch["query"]
    # one user per task: the meta features of the task's rows are those of its first row
    s = {k: (tf.repeat(v[:, :1], v.shape[1], axis=1)
             if k in ("age_bucket", "gender", "occupation", "zip_prefix", "user_hash") else v)
         for k, v in s.items()}
    q = {k: (tf.repeat(s[k][:, :1], v.shape[1], axis=1) if k in ("age_bucket", "gender",
             "occupation", "zip_prefix", "user_hash") else v) for k, v in q.items()}
    e_user = tf.random.stateless_normal([3, 2], seed=[1, 2], dtype=tf.float64)
    per_sample = tf.broadcast_to(e_user[:, None, :], [3, s["mask"].shape[1], 2])
    train_time = genre_block.query_genre_embeddings(model, s, per_sample, q, 2).numpy()
    genres = tf.argmax(q["genres"], axis=-1)
    serve_time = finetune.generate_genre_embeddings(
        model, {k: v for k, v in s.items() if k != "mask"}, s["mask"], genres, e_user).numpy()
    np.testing.assert_allclose(serve_time, train_time, rtol=1e-9, atol=1e-12)


def _without_row_dropout(model):
    """The same model settings with user-row dropout off (a fresh model, seed 1)."""
    import dataclasses

    return LimamlModel(model.layout, dataclasses.replace(model.model_cfg, user_id_dropout=0.0),
                       model.maml_cfg, seed=1, dtype=tf.float64)


def test_pretraining_a_multi_block_model_scores_rows_with_both_blocks_unadapted():
    model = _without_row_dropout(genre_model())
    batch = make_batch()
    q = batch["query"]
    params = dict(model.meta_params, user_row=model.user_rows(q["user_hash"]))
    emb = np.concatenate([meta_forward(params, model.meta_x(q), "tanh").numpy(),
                          model.genre_embedding(q).numpy()], axis=-1)          # [T, Q, 2E]
    want = masked_bce_by_hand(global_forward(model.global_params, tf.constant(emb), q, model.layout,
                                             model.model_cfg).numpy(), q)
    assert float(maml.pretrain_loss(model, batch)) == pytest.approx(want, rel=1e-10)
    trainer = maml.MamlTrainer(model, pretrain_lr=0.01)
    before = {k: v.numpy().copy() for k, v in model.genre_params.items()}
    for _ in range(3):
        trainer.pretrain_step(batch)
    assert float(maml.pretrain_loss(model, batch)) < want
    assert any(not np.array_equal(before[k], v.numpy()) for k, v in model.genre_params.items())


def _user_genre_model(steps=1):
    model = genre_model(steps=steps, genre_row_buckets=16)
    model.genre_user_emb.assign(tf.random.stateless_normal([16, 3], seed=[3, 9], dtype=tf.float64))
    return model


def test_the_pair_row_is_read_by_the_genre_block_as_worked_out_by_hand():
    """x_g = [meta input, one-hot(g), r[(user_hash · G + g) mod B]] through the genre MLP."""
    from trainer.model import meta_input

    model = _user_genre_model()
    batch = make_batch()
    q = batch["query"]
    g = tf.argmax(q["genres"] * tf.range(64, 0, -1, dtype=tf.float32), axis=-1).numpy()  # lowest
    g = np.where(q["genres"].numpy().any(-1), g, 0)
    from trainer.model import primary_genre
    np.testing.assert_array_equal(primary_genre(q["genres"]).numpy(), g)
    u = q["user_hash"].numpy()
    table = model.genre_user_emb.numpy()
    row = table[(u * 64 + g) * 2654435761 % (2**31 - 1) % 16]                  # [T, Q, 3]
    x = np.concatenate([meta_input(q, model.layout, tf.float64).numpy(), np.eye(64)[g], row], -1)
    p = {k: v.numpy() for k, v in model.genre_params.items()}
    want = np.tanh(x @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"]
    np.testing.assert_allclose(model.genre_embedding(q).numpy(), want, rtol=1e-12)
    # the cold start (explicit zero rows) differs from a trained pair's
    zero = model.genre_embedding(q, tf.zeros(row.shape, tf.float64)).numpy()
    x0 = x.copy()
    x0[..., -3:] = 0.0
    np.testing.assert_allclose(zero, np.tanh(x0 @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"], rtol=1e-12)


def test_the_inner_loop_moves_the_pair_row_by_its_support_gradient():
    """One inner step: r' = r − α_row ρ ∂L_support/∂r, the gradient by finite differences."""
    model = _user_genre_model(steps=1)
    batch = make_batch()
    s = batch["support"]
    genres = tf.constant([[1], [2], [3]], tf.int64)
    sub = genre_block.subtask_supports(s, genres)
    user_emb = tf.random.stateless_normal(sub["mask"].shape + (2,), seed=[5, 5], dtype=tf.float64)
    rows0 = genre_block.subtask_rows(model, s, genres)
    keys = s["user_hash"].numpy()[:, 0].astype(np.int64) * 64 + np.array([1, 2, 3])
    np.testing.assert_allclose(rows0.numpy(), model.genre_user_emb.numpy()[
        keys * 2654435761 % (2**31 - 1) % 16])
    theta = genre_block.adapt_genre_block(model, sub, user_emb, 1, rows=rows0)

    def support_loss(rows):  # the subtasks' summed masked support losses at un-adapted θ_g
        params = dict(model.genre_params, user_row=tf.constant(rows))
        emb = tf.concat([user_emb, meta_forward(params, model.genre_x(sub), "tanh")], -1)
        z = global_forward(model.global_params, emb, sub, model.layout, model.model_cfg).numpy()
        with np.errstate(invalid="ignore"):  # subtasks without rows: 0 / 0, left out
            return float(np.nansum(masked_bce_by_hand(z, sub, axis=1)))

    r0 = rows0.numpy()
    grad = np.zeros_like(r0)
    for i in np.ndindex(r0.shape):
        e = np.zeros_like(r0)
        e[i] = 1e-6
        grad[i] = (support_loss(r0 + e) - support_loss(r0 - e)) / 2e-6
    n = sub["mask"].numpy().sum(1)
    kappa = model.maml_cfg.support_shrinkage
    rho = (n / (n + kappa))[:, None]
    want = r0 - model.maml_cfg.user_row_lr * rho * grad
    np.testing.assert_allclose(theta["user_row"].numpy(), want, rtol=1e-6, atol=1e-9)
    assert np.abs(want - r0).max() > 1e-4  # the subtasks with rows really move


def test_pairs_spread_over_the_rows_whatever_the_table_size():
    """4,096 users x 8 genres into 2^15 rows (B and G powers of two): at least as many rows are
    used as uniform random hashing would use (B (1 - e^(-n/B))); a plain (u·G + g) mod B keeps
    only the user hash's low bits here and would use 128."""
    model = genre_model(genre_row_buckets=2**15)
    users = np.repeat(np.arange(0, 2**17, 32, dtype=np.int64), 8)             # 4,096 users
    genres = np.tile(np.arange(8, dtype=np.int64), 4096)
    used = np.unique(model.genre_row_index(tf.constant(users), tf.constant(genres)).numpy()).size
    n, b = users.size, 2**15
    assert np.unique((users * 64 + genres) % b).size == 128  # what the plain mod would do
    assert used >= 0.98 * b * (1 - np.exp(-n / b))


def test_pretraining_fits_the_rows_of_the_batchs_pairs_only():
    model = _without_row_dropout(_user_genre_model())
    batch = make_batch()
    q = batch["query"]
    from trainer.model import primary_genre
    used = set(model.genre_row_index(q["user_hash"], primary_genre(q["genres"])).numpy()[
        q["mask"].numpy() > 0].tolist())
    trainer = maml.MamlTrainer(model, pretrain_lr=0.01)
    trainer.pretrain_step(batch)
    moved = set(np.flatnonzero(np.abs(model.genre_user_emb.numpy()).sum(1) > 0).tolist())
    assert moved and moved <= used  # rows start at 0; only the batch's (valid) pairs move


@pytest.mark.parametrize("field", ["meta_hidden", "genre_hidden"])
def test_a_layer_width_below_one_is_refused_by_name(field):
    with pytest.raises(ValueError, match=rf"{field} \(8, 0\) must hold positive"):
        ModelConfig(**{field: (8, 0)})


def test_the_genre_subtasks_step_has_its_own_kappa_and_learning_rate():
    """One inner step of θ_g: Δθ_g(α_g, κ_g) = α_g / 0.3 · n / (n + κ_g) · Δθ_g(α = 0.3, κ = 0) per
    subtask of n rows, while the user block keeps its own κ (4) and α (``inner_lr`` = 0.3)."""
    s = dict(make_batch()["support"])  # masks: 4, 2 and 3 valid rows
    s["genres"] = one_hot_genres([[1, 1, 1, 2], [1, 1, 2, 2], [2, 1, 1, 1]])
    sub = genre_block.subtask_supports(s, tf.constant([[1], [1], [1]], tf.int64))
    n = sub["mask"].numpy().sum(1)
    np.testing.assert_array_equal(n, [3, 2, 2])  # genre-1 rows among the valid ones
    user_emb = tf.random.stateless_normal(sub["mask"].shape + (2,), seed=[3, 1], dtype=tf.float64)
    steps, user_block = {}, {}
    for kappa, lr in ((0.0, None), (5.0, None), (5.0, 0.9)):
        model = genre_model(genre_support_shrinkage=kappa, genre_inner_lr=lr)
        theta = genre_block.adapt_genre_block(model, sub, user_emb, 1)
        steps[kappa, lr] = {k: theta[k].numpy() - model.genre_params[k].numpy()[None] for k in theta}
        user_block[kappa, lr] = {k: v.numpy() for k, v in maml.adapt(model, s, 1).items()}
    for k, v in user_block[0.0, None].items():  # the user block's step ignores both settings
        start = 0.0 if k == "user_row" else model.meta_params[k].numpy()  # rows start at 0
        assert np.abs(v - start).max() > 0
        np.testing.assert_array_equal(user_block[5.0, 0.9][k], v)
    for k, full in steps[0.0, None].items():
        rho = (n / (n + 5.0)).reshape((-1,) + (1,) * (full.ndim - 1))
        assert np.abs(full).max() > 1e-4
        # ρ is computed in float32
        np.testing.assert_allclose(steps[5.0, None][k], rho * full, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(steps[5.0, 0.9][k], 3.0 * rho * full, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("field", ["genre_support_shrinkage", "genre_inner_lr"])
def test_a_negative_genre_step_setting_is_refused_by_name(field):
    with pytest.raises(ValueError, match=rf"{field} -1.0 must be >= 0"):
        MamlConfig(**{field: -1.0})


def test_summed_blocks_score_as_one_block_fed_the_sum():
    """genre_combine="sum": logit([e_user, e_genre]) = the one-block global block's logit of
    e_user + e_genre, with the same θ_global (whose input width is then E, not 2E)."""
    summed = ModelConfig(meta_hidden=(), embedding_dim=2, global_hidden=(4,), categorical_embedding_dim=2,
                         activation="tanh", user_id_buckets=8, user_id_embedding_dim=3,
                         meta_blocks=("user", "user_x_genre"), genre_combine="sum", interaction="dot")
    single = ModelConfig(meta_hidden=(), embedding_dim=2, global_hidden=(4,), categorical_embedding_dim=2,
                         activation="tanh", user_id_buckets=8, user_id_embedding_dim=3, interaction="dot")
    model = LimamlModel(build_layout(summed, VOCABS), summed, MamlConfig(), seed=1, dtype=tf.float64)
    one = LimamlModel(build_layout(single, VOCABS), single, MamlConfig(), seed=1, dtype=tf.float64)
    assert {k: v.shape for k, v in model.global_params.items()} == {
        k: v.shape for k, v in one.global_params.items()}
    q = make_batch()["query"]
    e_user = tf.random.stateless_normal(q["mask"].shape + (2,), seed=[1, 2], dtype=tf.float64)
    e_genre = tf.random.stateless_normal(q["mask"].shape + (2,), seed=[3, 4], dtype=tf.float64)
    got = global_forward(model.global_params, tf.concat([e_user, e_genre], -1), q, model.layout, summed)
    want = global_forward(model.global_params, e_user + e_genre, q, one.layout, single)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    concat = global_forward(model.global_params, tf.concat([e_user, -e_user], -1), q, model.layout, summed)
    np.testing.assert_allclose(concat.numpy(), global_forward(
        model.global_params, tf.zeros_like(e_user), q, one.layout, single).numpy(), rtol=1e-12)


def test_an_unknown_way_to_combine_blocks_is_refused_by_name():
    with pytest.raises(ValueError, match=r"genre_combine 'mean' must be one of \('concat', 'sum', 'residual'\)"):
        ModelConfig(genre_combine="mean")


def _residual_pair(genre_inner_lr=None):
    """A single-block model and a residual multi-block model of the same seed (float64)."""
    one = genre_model(blocks=("user",), seed=4)
    multi = genre_model(seed=4, genre_combine="residual", genre_inner_lr=genre_inner_lr)
    for k, v in one.meta_params.items():
        np.testing.assert_array_equal(multi.meta_params[k].numpy(), v.numpy())
    assert sorted(one.global_params) == sorted(multi.global_params)
    for k, v in one.global_params.items():  # the global block reads E, not 2E
        np.testing.assert_array_equal(multi.global_params[k].numpy(), v.numpy())
    return one, multi


def test_a_residual_genre_slot_that_does_not_adapt_scores_as_the_single_block_model():
    """genre_combine="residual": with the genre step at 0 (or no row of the genre) the slot is
    exactly 0, so the query loss and the pre-training loss are the single-block model's."""
    one, frozen = _residual_pair(genre_inner_lr=0.0)
    batch = make_batch()
    want = float(maml.maml_loss(one, batch, training=False)[0])
    assert float(maml.maml_loss(frozen, batch, training=False)[0]) == pytest.approx(want, rel=1e-12)
    assert np.abs(frozen.genre_embedding(batch["query"]).numpy()).max() == 0.0
    _, moving = _residual_pair()
    assert abs(float(maml.maml_loss(moving, batch, training=False)[0]) - want) > 1e-6


def test_the_residual_slot_is_the_change_of_one_inner_step_worked_out_by_finite_differences():
    """Δ = f_g(x_q; θ⁰ − α ∇L) − f_g(x_q; θ⁰), where L(θ) is the subtask's masked mean BCE of the
    global block fed e_user + f_g(x_s; θ) − f_g(x_s; θ⁰) (so at θ⁰ it reads e_user alone); ∇L by
    central differences on every entry of θ_g (κ_g = 0, one step)."""
    model = genre_model(genre_hidden=(), genre_support_shrinkage=0.0, genre_combine="residual")
    s = dict(make_batch()["support"])  # task 0: 4 valid rows
    s["genres"] = one_hot_genres([[1, 2, 1, 1], [1, 1, 2, 2], [2, 1, 1, 1]])
    q = {k: v[:1, :1] for k, v in make_batch()["query"].items()}  # task 0's first query row
    q["genres"] = one_hot_genres([[1]])
    s0 = {k: v[:1] for k, v in s.items()}
    user_emb = tf.random.stateless_normal([1, 4, 2], seed=[5, 5], dtype=tf.float64)
    got = genre_block.query_genre_embeddings(model, s0, user_emb, q, 1).numpy()[0, 0]

    theta0 = {k: v.numpy() for k, v in model.genre_params.items()}
    x_s, x_q = model.genre_x(s0), model.genre_x(q)
    mask = s0["mask"].numpy() * (np.argmax(s0["genres"].numpy(), -1) == 1)   # genre-1 rows: 0, 2, 3
    np.testing.assert_array_equal(mask, [[1, 0, 1, 1]])

    def f_g(theta, x):
        return meta_forward({k: tf.constant(v) for k, v in theta.items()}, x, "tanh")

    f0 = f_g(theta0, x_s)

    def loss(theta):
        emb = tf.concat([user_emb, f_g(theta, x_s) - f0], -1)  # read as their sum
        z = global_forward(model.global_params, emb, s0, model.layout, model.model_cfg).numpy()
        y = s0["label"].numpy()
        bce = np.logaddexp(0.0, z) - y * z
        return float((bce * mask).sum() / mask.sum())

    step = {}
    for k, v in theta0.items():
        g = np.zeros_like(v)
        for i in range(v.size):
            e = np.zeros(v.size)
            e[i] = 1e-6
            e = e.reshape(v.shape)
            g.flat[i] = (loss(dict(theta0, **{k: v + e})) - loss(dict(theta0, **{k: v - e}))) / 2e-6
        step[k] = v - 0.3 * g
    want = (f_g(step, x_q) - f_g(theta0, x_q)).numpy()[0, 0]
    assert np.abs(want).max() > 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("combine", ["concat", "sum", "residual"])
@pytest.mark.parametrize("rows", [0, 16])
def test_the_shared_first_step_equals_adapting_a_copy_of_the_rows_per_subtask(combine, rows):
    """One step: θ_g,(t,k) from one pass over the tasks' rows (adapt_subtasks) equals
    adapt_genre_block on [T·K, S] copies (one per subtask), and so do the meta-gradients."""
    model = genre_model(genre_row_buckets=rows, genre_combine=combine, genre_support_shrinkage=2.0)
    if rows:
        model.genre_user_emb.assign(tf.random.stateless_normal([rows, 3], seed=[8, 1], dtype=tf.float64))
    s = dict(make_batch()["support"])
    s["genres"] = one_hot_genres([[1, 2, 1, 2], [1, 1, 2, 2], [2, 1, 3, 1]])
    genres = tf.constant([[1, 2, 3], [2, 2, 1], [3, 1, 5]], tf.int64)        # 5: no rows anywhere
    user_emb = tf.random.stateless_normal([3, 4, 2], seed=[2, 7], dtype=tf.float64)
    k = genres.shape[1]

    def both():
        fast, start = genre_block.adapt_subtasks(model, s, genres, user_emb, 1)
        slow = genre_block.adapt_genre_block(model, genre_block.subtask_supports(s, genres),
                                             tf.repeat(user_emb, k, axis=0), 1,
                                             rows=genre_block.subtask_rows(model, s, genres))
        return fast, slow, start

    with tf.GradientTape(persistent=True) as tape:
        fast, slow, start = both()
        probe = {n: tf.random.stateless_normal(v.shape, seed=[i, 3], dtype=v.dtype)
                 for i, (n, v) in enumerate(sorted(slow.items()))}
        loss_fast = sum(tf.reduce_sum(tf.sin(fast[n]) * probe[n]) for n in probe)
        loss_slow = sum(tf.reduce_sum(tf.sin(slow[n]) * probe[n]) for n in probe)
    assert sorted(fast) == sorted(slow)
    for n in slow:
        np.testing.assert_allclose(fast[n].numpy(), slow[n].numpy(), rtol=1e-10, atol=1e-12)
        assert np.abs(slow[n].numpy() - (start.numpy() if n == "user_row" else
                                          model.genre_params[n].numpy()[None])).max() > 1e-5
    variables = model.outer_variables()
    g_fast = tape.gradient(loss_fast, variables)
    g_slow = tape.gradient(loss_slow, variables)
    checked = 0
    for v, a, b in zip(variables, g_fast, g_slow):
        if b is None:
            assert a is None or np.abs(tf.convert_to_tensor(a).numpy()).max() == 0.0, v.name
            continue
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=v.name)
        checked += 1
    assert checked >= 4
