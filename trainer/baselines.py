"""Baselines trained on flat encoded examples (not tasks), with Adam and early stopping.

* :class:`GlobalDNN`: the global block without a meta embedding; the meta features (user
  features) become ordinary global inputs, so the baseline sees every feature LiMAML sees.
* :class:`WideDeep`: wide (linear over one-hots of every categorical feature, the hashed user id,
  multi-hot and numeric inputs) + deep (the global block with a trained hashed user-id
  embedding in place of the meta embedding); logit = wide + deep.

References:
    Cheng et al., Wide & Deep Learning for Recommender Systems (arXiv:1606.07792) §3.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf

from limaml.config import ModelConfig, TrainConfig
from schema import features
from trainer import evaluate, linear
from trainer.flat_call import FlatCall
from trainer.layout import USER_HASH, FeatureLayout
from trainer.maml import Adam
from trainer.model import _dot, global_forward, init_global_params
from trainer.validation import early_stopping_roles, validation_rows  # noqa: F401 (re-exported)
from trainer.warm_start import fit_linear_cached, warm_start, warm_start_limaml  # noqa: F401

LABEL = features.LABEL
KINDS = ("global_dnn", "wide_deep", "linear", "linear_user_id")
log = logging.getLogger(__name__)


def flat_layout(layout: FeatureLayout) -> FeatureLayout:
    """The layout with every meta feature moved to the global block (no meta block)."""
    return dataclasses.replace(
        layout,
        meta_categorical=(), meta_multi_hot=(), meta_numeric=(),
        global_categorical=layout.meta_categorical + layout.global_categorical,
        global_multi_hot=layout.meta_multi_hot + layout.global_multi_hot,
        global_numeric=layout.meta_numeric + layout.global_numeric,
        use_user_id_in_meta=False)


class GlobalDNN(tf.Module):
    """Global block over all features, no personalization."""

    kind = "global_dnn"

    def __init__(self, layout: FeatureLayout, model_cfg: ModelConfig, seed: int = 0,
                 dtype: tf.DType = tf.float32):
        super().__init__(name="global_dnn")
        self.layout = flat_layout(layout)
        # wide & deep without the user id: a linear part over every feature, then the MLP
        self.model_cfg = model_cfg = dataclasses.replace(model_cfg, wide=True)
        self.dtype = dtype
        rng = np.random.RandomState(seed)
        init = init_global_params(rng, self.layout, model_cfg, meta_dim=0)
        self.global_params = {k: tf.Variable(v, dtype=dtype, name=k) for k, v in init.items()}

    def trainable(self) -> List[tf.Variable]:
        return [self.global_params[k] for k in sorted(self.global_params)]

    def l2_variables(self) -> List[tf.Variable]:
        return [v for k, v in sorted(self.global_params.items()) if not k.startswith("b")]

    def logits(self, feats: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Logits ``[...]`` of encoded features ``[...]``."""
        return global_forward(self.global_params, None, feats, self.layout, self.model_cfg)


class WideDeep(tf.Module):
    """Wide & deep with a hashed user-id embedding trained end to end."""

    kind = "wide_deep"

    def __init__(self, layout: FeatureLayout, model_cfg: ModelConfig, seed: int = 0,
                 dtype: tf.DType = tf.float32):
        super().__init__(name="wide_deep")
        self.layout = flat_layout(layout)
        # its wide part (below) already holds the linear terms
        self.model_cfg = model_cfg = dataclasses.replace(model_cfg, wide=False)
        self.dtype = dtype
        rng = np.random.RandomState(seed)
        c = model_cfg.categorical_embedding_dim
        init = init_global_params(rng, self.layout, model_cfg, meta_dim=0, extra_dim=c)
        self.global_params = {k: tf.Variable(v, dtype=dtype, name=k) for k, v in init.items()}
        self.user_embedding = tf.Variable(rng.normal(0, 0.05, (layout.user_id_buckets, c)),
                                          dtype=dtype, name="user_embedding")
        wide = {f"wide_{n}": np.zeros(v) for n, v in self.layout.global_categorical}
        wide["wide_user"] = np.zeros(layout.user_id_buckets)
        for n, b in self.layout.global_multi_hot:
            wide[f"wide_{n}"] = np.zeros(b)
        wide["wide_numeric"] = np.zeros(len(self.layout.global_numeric))
        wide["wide_bias"] = np.zeros(())
        self.wide_params = {k: tf.Variable(v, dtype=dtype, name=k) for k, v in wide.items()}

    def trainable(self) -> List[tf.Variable]:
        return ([self.global_params[k] for k in sorted(self.global_params)] + [self.user_embedding]
                + [self.wide_params[k] for k in sorted(self.wide_params)])

    def l2_variables(self) -> List[tf.Variable]:
        return ([v for k, v in sorted(self.global_params.items()) if not k.startswith("b")]
                + [self.user_embedding]
                + [v for k, v in sorted(self.wide_params.items()) if k != "wide_bias"])

    def logits(self, feats: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Logits ``[...]`` of encoded features ``[...]`` (needs ``user_hash``)."""
        uh = tf.cast(feats[USER_HASH], tf.int64)
        deep = global_forward(self.global_params, None, feats, self.layout, self.model_cfg,
                              extra=tf.gather(self.user_embedding, uh))
        w = self.wide_params
        wide = w["wide_bias"] + tf.gather(w["wide_user"], uh)
        for n, _ in self.layout.global_categorical:
            wide += tf.gather(w[f"wide_{n}"], tf.cast(feats[n], tf.int64))
        for n, _ in self.layout.global_multi_hot:
            wide += _dot(tf.cast(feats[n], self.dtype), w[f"wide_{n}"])
        for i, n in enumerate(self.layout.global_numeric):
            wide += tf.cast(feats[n], self.dtype) * w["wide_numeric"][i]
        return deep + wide


def make_baseline(kind: str, layout: FeatureLayout, model_cfg: ModelConfig, seed: int = 0):
    """Builds a baseline by kind (one of :data:`KINDS`)."""
    if kind == "global_dnn":
        return GlobalDNN(layout, model_cfg, seed)
    if kind == "wide_deep":
        return WideDeep(layout, model_cfg, seed)
    if kind in linear.KINDS:
        return linear.LinearModel(layout, kind)
    raise ValueError(f"baseline kind {kind!r} must be one of {KINDS}")


def _subset(data: Mapping[str, np.ndarray], idx: np.ndarray, keys) -> Dict[str, np.ndarray]:
    return {k: np.asarray(data[k])[idx] for k in keys}


def predict_logits(model, data: Mapping[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
    """Logits of flat encoded examples ``{feature: [N, ...]}`` in batches."""
    keys = _input_keys(model)
    n = len(np.asarray(data[keys[0]]))
    fn = _logit_fn(model)
    out = [fn({k: tf.constant(np.asarray(data[k])[i:i + batch_size]) for k in keys}).numpy()
           for i in range(0, n, batch_size)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _input_keys(model) -> List[str]:
    if isinstance(model, linear.LinearModel):
        return model.input_keys()
    keys = list(model.layout.global_feature_names)
    if isinstance(model, WideDeep):
        keys.append(USER_HASH)
    return keys


def _logit_fn(model):
    fn = getattr(model, "_logit_fn", None)
    if fn is None:
        fn = FlatCall(tf.function(model.logits, reduce_retracing=True, autograph=False))
        object.__setattr__(model, "_logit_fn", fn)
    return fn


def fit_baseline(model, data: Mapping[str, np.ndarray], train_cfg: TrainConfig,
                 val_data: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, object]:
    """Trains a baseline with Adam on flat examples; early stopping on the validation rows
    (``baseline_early_stopping``: 1 - AUC or log loss; ``val_loss`` holds that score).

    Args:
        model: :class:`GlobalDNN` or :class:`WideDeep`.
        data: ``{feature: [N, ...], "label": [N]}`` encoded examples.
        train_cfg: baseline_lr, baseline_batch_size, baseline_epochs, baseline_patience,
            baseline_val_fraction (used when ``val_data`` is None), baseline_l2, seed.
        val_data: optional validation examples.

    Returns:
        ``{"epochs": run, "best_epoch": int, "val_loss": [per epoch], "seconds": float,
        "warm_start": fit info, "warm_start_val_loss": epoch -1's score}``; the model holds the
        weights of the best validation epoch, or, when the warm start won, its linear
        counterpart refitted on every row.
    """
    keys = _input_keys(model)
    rng = np.random.RandomState(train_cfg.seed)
    n = len(np.asarray(data[LABEL]))
    if isinstance(model, linear.LinearModel):
        if val_data is not None:
            data = {k: np.concatenate([np.asarray(data[k]), np.asarray(val_data[k])])
                    for k in keys + [LABEL]}
            mask = np.arange(len(data[LABEL])) >= n
            return linear.fit_linear(model, data, mask, c_grid=train_cfg.linear_c_grid)
        # the fit a deep baseline's fallback made on the same rows, when one did (same process)
        return fit_linear_cached(model, data, train_cfg)
    all_rows = data if val_data is None else None  # the fallback's refit (internal split only)
    val_users = None
    if val_data is None and train_cfg.baseline_val_fraction > 0 and n >= 20:
        role = early_stopping_roles(data, train_cfg)
        if features.USER_ID in data:
            val_users = np.asarray(data[features.USER_ID])[role == "val"]
        val_data = _subset(data, np.flatnonzero(role == "val"), keys + [LABEL])
        data = _subset(data, np.flatnonzero(role == "train"), keys + [LABEL])
        n = len(data[LABEL])
    warm = None
    if train_cfg.linear_warm_start:
        # fitted without the validation rows, so that the warm start (epoch -1) and the trained
        # epochs are compared on rows none of them has seen
        warm = warm_start(model, data, train_cfg, val_data)
    variables = model.trainable()
    opt = Adam(variables, lr=train_cfg.baseline_lr)
    l2 = float(train_cfg.baseline_l2)
    l2_vars = model.l2_variables()

    @FlatCall
    @tf.function(reduce_retracing=True, autograph=False)
    def step(feats, labels):
        with tf.GradientTape() as tape:
            logits = model.logits(feats)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
                labels=tf.cast(labels, logits.dtype), logits=logits))
            if l2 > 0:
                loss += l2 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in l2_vars])
        grads = tape.gradient(loss, variables)
        opt.apply(grads)
        return loss

    watch = train_cfg.baseline_early_stopping
    if watch not in ("auc", "logloss"):
        raise ValueError(f"baseline_early_stopping {watch!r} must be 'auc' or 'logloss'")

    def val_loss() -> float:
        """Validation score to minimise: log loss, or 1 - AUC."""
        if val_data is None:
            return float("nan")
        p = predict_logits(model, val_data)
        y = np.asarray(val_data[LABEL], np.float64)
        if watch == "auc":
            return 1.0 - evaluate.auc(y, p)
        return float(np.mean(np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p)))))

    bs = train_cfg.baseline_batch_size
    best, best_epoch, history, waited = np.inf, -1, [], 0
    if warm is not None and val_data is not None:
        best = val_loss()  # the warm-started model itself is a candidate (epoch -1)
    warm_score = best if np.isfinite(best) else None
    best_vals = [v.numpy() for v in variables]
    warm_vals = best_vals if warm is not None else None
    start = time.time()
    epoch = 0
    for epoch in range(train_cfg.baseline_epochs):
        perm = rng.permutation(n)
        for i in range(0, n - bs + 1 if n >= bs else 1, bs):
            idx = perm[i:i + bs]
            loss = step({k: tf.constant(np.asarray(data[k])[idx]) for k in keys},
                        tf.constant(np.asarray(data[LABEL])[idx]))
            if not np.isfinite(float(loss)):
                raise FloatingPointError(f"baseline {model.kind}: non-finite loss {float(loss)} "
                                         f"in epoch {epoch}")
        vl = val_loss()
        history.append(vl)
        if watch == "auc":
            log.info("baseline %s epoch %d: val AUC %.4f", model.kind, epoch, 1.0 - vl)
        else:
            log.info("baseline %s epoch %d: val log loss %.4f", model.kind, epoch, vl)
        if val_data is None or vl < best - 1e-5:
            best, best_epoch, waited = vl, epoch, 0
            best_vals = [v.numpy() for v in variables]
        else:
            waited += 1
            if waited >= train_cfg.baseline_patience:
                break
    for v, val in zip(variables, best_vals):
        v.assign(val)
    gain = None
    if (best_epoch >= 0 and warm_vals is not None and watch == "auc" and val_users is not None
            and train_cfg.baseline_significant_gain):
        gain = _gain_over(model, variables, warm_vals, val_data, val_users, train_cfg.seed)
        if gain["ci95"] is None or gain["ci95"][0] <= 0.0:
            best_epoch = -1  # not significantly better than its linear counterpart: keep that
    if best_epoch == -1 and warm is not None and all_rows is not None:
        # no trained epoch beat the warm start: the model is its linear counterpart, refitted
        # on every row as the linear reference is (the deep part's output weights stay 0)
        warm = warm_start(model, all_rows, train_cfg)
    return {"epochs": epoch + 1, "best_epoch": best_epoch, "val_loss": history,
            "seconds": time.time() - start, "warm_start": warm, "warm_start_val_loss": warm_score,
            "gain_over_warm_start": gain}


def _gain_over(model, variables: List[tf.Variable], warm_vals: List[np.ndarray],
               val_data: Mapping[str, np.ndarray], val_users: np.ndarray, seed: int) -> Dict:
    """Validation AUC(trained) − AUC(warm start) with its paired user-bootstrap 95% interval
    (:func:`report.paired.paired_bootstrap`, 1,000 resamples); leaves the trained weights in."""
    from report import paired  # noqa: PLC0415  (stats only; keeps trainer importable without it)

    trained_vals = [v.numpy() for v in variables]
    for v, val in zip(variables, warm_vals):
        v.assign(val)
    p_warm = predict_logits(model, val_data)
    for v, val in zip(variables, trained_vals):
        v.assign(val)
    p_trained = predict_logits(model, val_data)
    out = paired.paired_bootstrap(
        val_users, np.asarray(val_data[LABEL]) > 0.5, {"trained": p_trained, "warm": p_warm},
        np.full(len(val_users), "all"), reference="trained", cohort_names=(), seed=seed)
    entry = out["trained_vs_warm"]["overall"]
    return {"delta": entry["delta"], "ci95": entry["ci95"]}
