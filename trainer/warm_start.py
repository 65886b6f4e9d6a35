"""Warm starts: a deep model's wide part starts as its fitted linear counterpart.

The deep baselines (global DNN -> ``linear``, wide&deep -> ``linear_user_id``) and LiMAML's wide
part (the linear model over its global features) copy the fitted logistic regression into their
wide weights and start their MLP's output weights at 0, so the deep part learns the residual and
early stopping can fall back to the linear solution. Fits on the same rows share one convex fit.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from limaml.config import TrainConfig
from schema import features
from trainer import linear
from trainer.validation import validation_rows

LABEL = features.LABEL


def warm_start(model, data: Mapping[str, np.ndarray], train_cfg: TrainConfig,
                val_data: Optional[Mapping[str, np.ndarray]] = None) -> Optional[Dict]:
    """Fits the linear counterpart and copies it into the model's wide part (None: no wide part).

    With ``val_data`` the fit chooses C on those rows and never trains on them."""
    if model.kind == "wide_deep":
        fitted = linear.LinearModel(model.layout, "linear_user_id")
        target, names = model.wide_params, {"bias": "wide_bias"}
    elif model.kind == "global_dnn" and model.model_cfg.wide:
        fitted = linear.LinearModel(model.layout, "linear")
        target, names = model.global_params, {"bias": "b_out"}
    else:
        return None
    info = fit_linear_cached(fitted, data, train_cfg, val_data)
    linear.warm_start_wide(target, fitted, names)
    if "w_out" in model.global_params:  # the deep part starts silent: the model = the linear fit
        model.global_params["w_out"].assign(tf.zeros_like(model.global_params["w_out"]))
    return {"kind": fitted.kind, "C": info["C"]}


def warm_start_limaml(model, data: Mapping[str, np.ndarray], train_cfg: TrainConfig) -> Optional[Dict]:
    """Starts LiMAML's global block as the linear model over its global features (item, genres,
    year): the wide part gets the fitted weights, the MLP's output weights 0 (None: no wide part).

    Args:
        model: a :class:`trainer.model.LimamlModel` with ``model_cfg.wide``.
        data: flat encoded training rows (with user ids and timestamps for the validation rows).
        train_cfg: ``linear_c_grid`` and the seed of the validation rows.
    """
    if not model.model_cfg.wide:
        return None
    fitted = linear.LinearModel(model.layout, "linear", global_only=True)
    info = fit_linear_cached(fitted, data, train_cfg)
    linear.warm_start_wide(model.global_params, fitted, {"bias": "b_out"})
    model.global_params["w_out"].assign(tf.zeros_like(model.global_params["w_out"]))
    return {"kind": "linear (global features)", "C": info["C"]}


# Linear fits on the same rows (warm starts across tuning candidates and seeds, a deep
# baseline's fallback refit and the linear trainer of the same pipeline run) share one convex
# fit. The cache holds weights only (kilobytes to a megabyte each), the last
# ``_LINEAR_FITS_KEPT`` fits. Callers may fit from several threads: the cache is read and
# updated under a lock, and a fit keeps its own reference, never a slot another thread may drop.
_LINEAR_FITS: "OrderedDict[tuple, tuple]" = OrderedDict()
_LINEAR_FITS_KEPT = 4
_LINEAR_FITS_LOCK = threading.Lock()


def _fingerprint(data: Mapping[str, np.ndarray], keys) -> str:
    """Content hash of the columns a fit reads (object columns by their string values)."""
    h = hashlib.sha1()
    for k in keys:
        if k in data:
            v = np.asarray(data[k])
            h.update(k.encode())
            h.update(v.astype(str).tobytes() if v.dtype == object else np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def fit_linear_cached(fitted, data: Mapping[str, np.ndarray], train_cfg: TrainConfig,
                      val_data: Optional[Mapping[str, np.ndarray]] = None) -> Dict:
    """Fits (or reuses the fit of) ``fitted``; with ``val_data``: C chosen there, weights from
    ``data`` alone."""
    columns = fitted.input_keys() + [LABEL, features.USER_ID, features.TIMESTAMP]
    key = (_fingerprint(data, columns), None if val_data is None else _fingerprint(val_data, columns),
           fitted.kind, tuple(fitted.layout.global_feature_names),
           fitted.user_id_buckets, tuple(train_cfg.linear_c_grid), train_cfg.seed)
    with _LINEAR_FITS_LOCK:
        hit = _LINEAR_FITS.get(key)
        if hit is not None:
            _LINEAR_FITS.move_to_end(key)
    if hit is None:
        if val_data is None:
            info = linear.fit_linear(fitted, data, validation_rows(data, train_cfg),
                                     c_grid=train_cfg.linear_c_grid)
        else:
            cols = fitted.input_keys() + [LABEL]
            both = {k: np.concatenate([np.asarray(data[k]), np.asarray(val_data[k])]) for k in cols}
            is_val = np.arange(len(both[LABEL])) >= len(np.asarray(data[LABEL]))
            info = linear.fit_linear(fitted, both, is_val, c_grid=train_cfg.linear_c_grid,
                                     refit_on_validation=False)
        hit = ({k: v.numpy() for k, v in fitted.params.items()}, info)
        with _LINEAR_FITS_LOCK:
            _LINEAR_FITS[key] = hit
            while len(_LINEAR_FITS) > _LINEAR_FITS_KEPT:
                _LINEAR_FITS.popitem(last=False)
    values, info = hit
    for k, v in values.items():
        fitted.params[k].assign(v)
    return info
