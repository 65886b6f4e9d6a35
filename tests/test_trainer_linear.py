"""The linear floor: the logistic regression reaches optima worked out by hand, and exports."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from trainer import baselines, linear
from trainer.layout import FeatureLayout


def item_only_layout(items: int, user_buckets: int = 4) -> FeatureLayout:
    return FeatureLayout(meta_categorical=(), meta_multi_hot=(), meta_numeric=(),
                         global_categorical=(("item_id", items),), global_multi_hot=(),
                         global_numeric=(), use_user_id_in_meta=False, user_id_buckets=user_buckets)


def probs(model, data):
    return 1 / (1 + np.exp(-baselines.predict_logits(model, data)))


def test_nearly_unregularized_fit_of_a_saturated_model_gives_each_items_click_rate():
    # non-separable: item 0 clicked 3 of 4 times, item 1 once in 5, item 2 half the time
    items = np.array([0] * 4 + [1] * 5 + [2] * 6)
    labels = np.array([1, 1, 1, 0] + [1, 0, 0, 0, 0] + [1, 0] * 3, np.float32)
    data = {"item_id": items, "label": labels}
    model = linear.LinearModel(item_only_layout(3))
    info = linear.fit_linear(model, data, c_grid=(1e6,))
    assert info["converged"]
    np.testing.assert_allclose(probs(model, {"item_id": np.array([0, 1, 2])}), [0.75, 0.2, 0.5],
                               atol=1e-4)


def test_separable_data_with_l2_reaches_the_hand_solved_optimum():
    # item 0 always clicked, item 1 never: separable. With L2 and by symmetry b = 0, w1 = -w0 and
    # the optimum of ½(w0² + w1²) + C[log(1+e^-w0) + log(1+e^w1)] solves w0 = C·σ(−w0).
    c = 2.0
    w0 = brentq(lambda w: w - c / (1 + np.exp(w)), 0, 10)
    data = {"item_id": np.array([0, 1]), "label": np.array([1, 0], np.float32)}
    model = linear.LinearModel(item_only_layout(2))
    linear.fit_linear(model, data, c_grid=(c,))
    p = probs(model, {"item_id": np.array([0, 1])})
    np.testing.assert_allclose(p, [1 / (1 + np.exp(-w0)), 1 / (1 + np.exp(w0))], rtol=1e-4)
    assert model.params["w_item_id"].numpy()[0] == pytest.approx(w0, rel=1e-4)


def test_user_id_column_is_used_and_validation_chooses_stronger_regularisation_on_noise():
    rng = np.random.RandomState(0)
    n = 4000
    users = rng.randint(0, 4, n)
    items = rng.randint(0, 3, n)
    user_effect = np.array([-1.5, -0.5, 0.5, 1.5])
    y = (rng.rand(n) < 1 / (1 + np.exp(-user_effect[users]))).astype(np.float32)
    data = {"item_id": items, "user_hash": users, "label": y}
    model = linear.LinearModel(item_only_layout(3), kind="linear_user_id")
    val = rng.rand(n) < 0.3
    info = linear.fit_linear(model, data, val_mask=val, c_grid=(1e-4, 1.0))
    assert info["C"] == 1.0  # the user signal is real: weak regularisation wins on validation
    w = model.params["w_user"].numpy()
    assert np.all(np.diff(w) > 0.5)  # recovers the planted ordering and spacing (~1.0)
    noise = {"item_id": items, "user_hash": users, "label": (rng.rand(n) < 0.5).astype(np.float32)}
    info = linear.fit_linear(linear.LinearModel(item_only_layout(3), kind="linear_user_id"), noise,
                             val_mask=val, c_grid=(1e-4, 100.0))
    assert info["C"] == 1e-4  # pure noise: the strong penalty generalises better


def test_regularisation_path_fits_equal_independent_cold_fits_and_warm_starts_are_used():
    """The C grid is fitted as a warm-started path: each C's validation loss and the final
    weights equal those of cold fits at the same C (strictly convex: one optimum), and a fit
    started at its own optimum stops at once (the warm start is really used)."""
    import scipy.sparse as sp

    rng = np.random.RandomState(3)
    n = 3000
    items, users = rng.randint(0, 20, n), rng.randint(0, 30, n)
    logit = rng.normal(0, 1, 20)[items] + rng.normal(0, 0.8, 30)[users] - 0.3
    y = (rng.rand(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    data = {"item_id": items, "user_hash": users, "label": y}
    val = rng.rand(n) < 0.25
    grid = (1.0, 0.01, 0.1)  # unsorted on purpose
    model = linear.LinearModel(item_only_layout(20, user_buckets=30), kind="linear_user_id")
    info = linear.fit_linear(model, data, val_mask=val, c_grid=grid)
    assert list(info["val_logloss"]) == list(grid)  # reported in the grid's order

    cold = linear.LinearModel(item_only_layout(20, user_buckets=30), kind="linear_user_id")
    x = cold.design_matrix(data)
    for c in grid:  # independent cold fits on the training rows (scikit-learn, tight tolerance)
        p = sklearn_fit(x[~val], y[~val], c).predict_proba(x[val])[:, 1]
        want = -np.mean(y[val] * np.log(p) + (1 - y[val]) * np.log(1 - p))
        assert info["val_logloss"][c] == pytest.approx(want, abs=1e-6), c
    ref = sklearn_fit(x, y, info["C"])
    np.testing.assert_allclose(probs(model, data), ref.predict_proba(x)[:, 1], atol=1e-5)
    own = linear._solve(x, y, info["C"], 100)
    warm = linear._solve(x, y, info["C"], 100, (own.coef, own.intercept))
    assert own.iterations >= 2 and warm.iterations == 0, (own.iterations, warm.iterations)
    assert isinstance(x, sp.csr_matrix) and info["iterations"] > 0


def sklearn_fit(x, y, c):
    """The independent reference: scikit-learn's L-BFGS on the same objective, run far tighter
    than its default."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, solver="lbfgs", tol=1e-10, max_iter=10000).fit(x, y.astype(int))


def test_one_class_labels_are_refused_with_a_clear_error():
    model = linear.LinearModel(item_only_layout(2))
    with pytest.raises(ValueError, match="one class"):
        linear.fit_linear(model, {"item_id": np.array([0, 1]), "label": np.array([1.0, 1.0])})


def _encoded_world(num_users: int = 120):
    from limaml.config import ModelConfig
    from limaml.data.synthetic import SyntheticConfig, generate
    from trainer.layout import build_layout
    from trainer.local_encoder import LocalEncoder

    frame = generate(SyntheticConfig(num_users=num_users, num_items=40, mean_interactions=15, seed=2))
    mcfg = ModelConfig(meta_hidden=(8,), embedding_dim=4, global_hidden=(8,),
                       categorical_embedding_dim=4, user_id_buckets=512, wide=True)
    enc = LocalEncoder(mcfg.user_id_buckets).fit(frame)
    return enc.encode(frame), build_layout(mcfg, enc.vocab_sizes), mcfg


@pytest.mark.parametrize("kind,linear_kind", [("global_dnn", "linear"),
                                              ("wide_deep", "linear_user_id")])
def test_warm_started_deep_baseline_starts_as_its_linear_counterpart(kind, linear_kind):
    from limaml.config import TrainConfig

    data, layout, mcfg = _encoded_world()
    cfg = TrainConfig(linear_c_grid=(0.3,))
    model = baselines.make_baseline(kind, layout, mcfg)
    info = baselines.warm_start(model, data, cfg)
    assert info["kind"] == linear_kind
    ref = linear.LinearModel(layout, linear_kind)
    linear.fit_linear(ref, data, c_grid=(0.3,))
    np.testing.assert_allclose(baselines.predict_logits(model, data),
                               baselines.predict_logits(ref, data), rtol=1e-4, atol=1e-4)


def test_warm_started_limaml_global_block_is_the_linear_model_on_global_features():
    import tensorflow as tf

    from limaml.config import MamlConfig, TrainConfig
    from trainer.model import LimamlModel

    data, layout, mcfg = _encoded_world()
    model = LimamlModel(layout, mcfg, MamlConfig())
    baselines.warm_start_limaml(model, data, TrainConfig(linear_c_grid=(0.3,)))
    ref = linear.LinearModel(layout, "linear", global_only=True)
    assert "w_age_bucket" not in ref.params  # user features are the meta block's
    linear.fit_linear(ref, data, c_grid=(0.3,))
    feats = {k: tf.constant(v) for k, v in data.items() if v.dtype != object}
    got = model.logits(feats, meta_emb=tf.random.normal([len(data["label"]), 4])).numpy()
    np.testing.assert_allclose(got, ref.logits(feats).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("watch", ["auc", "logloss"])
def test_early_stopping_falls_back_to_the_linear_counterpart_when_training_only_hurts(watch):
    from limaml.config import TrainConfig

    data, layout, mcfg = _encoded_world()
    # a learning rate of 50 wrecks every epoch: the warm start (epoch -1) must win, and the
    # model is then the linear reference itself (refitted on every row)
    cfg = TrainConfig(linear_c_grid=(0.3,), baseline_lr=50.0, baseline_epochs=2,
                      baseline_early_stopping=watch)
    ref = linear.LinearModel(layout, "linear")
    linear.fit_linear(ref, data, c_grid=(0.3,))
    model = baselines.make_baseline("global_dnn", layout, mcfg)
    info = baselines.fit_baseline(model, data, cfg)
    assert info["best_epoch"] == -1
    np.testing.assert_allclose(baselines.predict_logits(model, data),
                               baselines.predict_logits(ref, data), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,linear_kind", [("global_dnn", "linear"),
                                              ("wide_deep", "linear_user_id")])
def test_the_warm_start_is_judged_on_validation_rows_it_never_learned_from(kind, linear_kind):
    """Planted: an item that only validation rows carry, always clicked there. The warm start's
    recorded validation AUC must be that of a linear fit on the training rows alone (worked out
    here with fit_linear), and such a fit gives the unseen item weight exactly 0."""
    from limaml.config import TrainConfig

    data, layout, mcfg = _encoded_world()
    cfg = TrainConfig(linear_c_grid=(0.3,), baseline_lr=50.0, baseline_epochs=1)
    role = baselines.early_stopping_roles(data, cfg)
    val, train = role == "val", role == "train"
    assert val.sum() >= 20
    planted = int(data["item_id"].max())
    marked = val & (np.cumsum(val) % 2 == 0)  # every other validation row carries the item
    data = dict(data, item_id=np.where(marked, planted, np.minimum(data["item_id"], planted - 1)),
                label=np.where(marked, 1.0, data["label"]).astype(np.float32))
    ref = linear.LinearModel(layout, linear_kind)
    linear.fit_linear(ref, {k: v[train] for k, v in data.items()}, c_grid=(0.3,))
    assert abs(float(ref.params["w_item_id"].numpy()[planted])) < 1e-6
    p = baselines.predict_logits(ref, {k: v[val] for k, v in data.items()})
    y = data["label"][val]
    pos, neg = p[y == 1], p[y == 0]
    auc = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    info = baselines.fit_baseline(baselines.make_baseline(kind, layout, mcfg), data, cfg)
    assert info["warm_start_val_loss"] == pytest.approx(1.0 - auc, abs=1e-6)


def test_auc_early_stopping_scores_epochs_by_one_minus_validation_auc():
    from limaml.config import TrainConfig

    data, layout, mcfg = _encoded_world()
    cfg = TrainConfig(linear_c_grid=(0.3,), baseline_epochs=1, baseline_patience=5,
                      linear_warm_start=False)
    model = baselines.make_baseline("global_dnn", layout, mcfg)
    info = baselines.fit_baseline(model, data, cfg)
    val = baselines.early_stopping_roles(data, cfg) == "val"
    y = data["label"][val]
    p = baselines.predict_logits(model, {k: v[val] for k, v in data.items()})
    # independent AUC: the share of (positive, negative) pairs ranked right
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert info["val_loss"][0] == pytest.approx(1.0 - pairs, abs=1e-9)


def test_a_deep_baseline_keeps_trained_weights_only_for_a_significant_validation_gain():
    """Planted: labels = (item parity) XOR (gender), which no linear model over one-hots can
    fit but an MLP can: the trained deep part must be kept, with a gain interval above 0.
    Labels from the item alone (a linear truth): the deep part cannot gain significantly, and
    the model falls back to its linear counterpart."""
    from limaml.config import TrainConfig

    data, layout, mcfg = _encoded_world(num_users=1500)
    rng = np.random.RandomState(0)
    xor = (data["item_id"] % 2) ^ (data["gender"] == 1)
    noisy = np.where(rng.rand(len(xor)) < 0.9, xor, 1 - xor).astype(np.float32)
    cfg = TrainConfig(linear_c_grid=(0.3,), baseline_lr=0.01, baseline_epochs=15,
                      baseline_patience=3)
    info = baselines.fit_baseline(baselines.make_baseline("global_dnn", layout, mcfg),
                                  dict(data, label=noisy), cfg)
    assert info["best_epoch"] >= 0
    assert info["gain_over_warm_start"]["ci95"][0] > 0

    item_truth = (rng.rand(len(xor)) < np.where(data["item_id"] % 3 == 0, 0.8, 0.3)).astype(np.float32)
    model = baselines.make_baseline("global_dnn", layout, mcfg)
    info = baselines.fit_baseline(model, dict(data, label=item_truth), cfg)
    assert info["best_epoch"] == -1
    ref = linear.LinearModel(layout, "linear")
    linear.fit_linear(ref, dict(data, label=item_truth), c_grid=(0.3,))
    np.testing.assert_allclose(baselines.predict_logits(model, data),
                               baselines.predict_logits(ref, data), rtol=1e-4, atol=1e-4)


def test_linear_trainer_reuses_the_fit_a_fallback_made_on_the_same_rows(monkeypatch):
    """The global DNN's fallback refit and the linear trainer fit the same model on the same
    rows: the second one takes the first one's weights instead of solving again, and rows that
    differ in one label are solved anew."""
    from limaml.config import TrainConfig
    from trainer import warm_start

    data, layout, mcfg = _encoded_world()
    cfg = TrainConfig(linear_c_grid=(0.1, 1.0))
    solves = []
    real = linear.fit_linear
    monkeypatch.setattr(linear, "fit_linear", lambda *a, **k: solves.append(1) or real(*a, **k))
    dnn = baselines.make_baseline("global_dnn", layout, mcfg)
    fallback = linear.LinearModel(dnn.layout, "linear")
    warm_start.fit_linear_cached(fallback, data, cfg)  # what the fallback refit does
    trained = baselines.make_baseline("linear", layout, mcfg)
    info = baselines.fit_baseline(trained, data, cfg)
    assert len(solves) == 1 and info["C"] in (0.1, 1.0)
    for k, v in fallback.params.items():
        np.testing.assert_array_equal(trained.params[k].numpy(), v.numpy())
    flipped = dict(data, label=np.where(np.arange(len(data["label"])) == 0,
                                        1 - data["label"], data["label"]))
    baselines.fit_baseline(baselines.make_baseline("linear", layout, mcfg), flipped, cfg)
    assert len(solves) == 2
