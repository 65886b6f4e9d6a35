"""Logistic-regression references: the linear floor every deep model must beat.

``linear``: one-hots of every categorical feature (item id and the user features), the genre
multi-hot and the z-scored year. ``linear_user_id``: the same plus a one-hot of the hashed user id.
Fitted to convergence (diagonally preconditioned Newton-CG, :mod:`trainer.logistic_newton`,
max |gradient| <= 1e-7 on scikit-learn's scaling of the objective) on a sparse design matrix;
the L2 strength ``C`` is chosen by validation log loss on training users' later interactions
(:mod:`trainer.validation`), then the model is refitted on every row.
The fitted weights live in a ``tf.Module`` with the baselines' interface (``logits``,
``layout``, ``kind``) so export and TFMA treat it like any other model:

    logit = b + Σ_f w_f[x_f] + w_genres · multi_hot + w_year · year [+ w_user[user_hash]]

References:
    Nocedal, Wright, Numerical Optimization, 2nd ed., §7.1 (Newton-CG); the objective is
    scikit-learn's ``LogisticRegression(C)``, which the tests use as the independent reference.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from schema import features
from trainer import logistic_newton
from trainer.layout import USER_HASH, FeatureLayout
from trainer.model import _dot

LABEL = features.LABEL
KINDS = ("linear", "linear_user_id")
DEFAULT_C_GRID: Tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
SOLVER_TOL = 1e-7
"""Convergence: max |∇F| of the mean-scaled objective (scikit-learn's L-BFGS stopped at 1e-6)."""
log = logging.getLogger(__name__)


class LinearModel(tf.Module):
    """Weights of a logistic regression over encoded features (see module docstring).

    Attributes:
        kind: ``"linear"`` or ``"linear_user_id"``.
        layout: flat layout (every feature global).
        params: ``w_<categorical>`` ``[vocab]``, ``w_<multi_hot>`` ``[buckets]``,
            ``w_numeric`` ``[n_numeric]``, ``bias`` ``[]`` and, with the user id, ``w_user``
            ``[user_id_buckets]``.
    """

    def __init__(self, layout: FeatureLayout, kind: str = "linear", dtype: tf.DType = tf.float32,
                 global_only: bool = False):
        super().__init__(name=kind)
        if kind not in KINDS:
            raise ValueError(f"linear kind {kind!r} must be one of {KINDS}")
        from trainer.baselines import flat_layout

        self.kind = kind
        # global_only: the global block's features only (the warm start of LiMAML's wide part)
        self.layout = (dataclasses.replace(layout, meta_categorical=(), meta_multi_hot=(),
                                           meta_numeric=(), use_user_id_in_meta=False)
                       if global_only else flat_layout(layout))
        self.user_id_buckets = layout.user_id_buckets
        self.dtype = dtype
        shapes = self.blocks()
        self.params = {name: tf.Variable(tf.zeros([width], dtype), name=name)
                       for name, _, width in shapes}
        self.params["bias"] = tf.Variable(tf.zeros([], dtype), name="bias")

    @property
    def uses_user_id(self) -> bool:
        return self.kind == "linear_user_id"

    def blocks(self) -> List[Tuple[str, str, int]]:
        """Design-matrix blocks in column order: ``(param name, feature, width)``."""
        out = [(f"w_{n}", n, v) for n, v in self.layout.global_categorical]
        out += [(f"w_{n}", n, b) for n, b in self.layout.global_multi_hot]
        if self.layout.global_numeric:
            out.append(("w_numeric", "", len(self.layout.global_numeric)))
        if self.uses_user_id:
            out.append(("w_user", USER_HASH, self.user_id_buckets))
        return out

    def input_keys(self) -> List[str]:
        keys = list(self.layout.global_feature_names)
        return keys + ([USER_HASH] if self.uses_user_id else [])

    def logits(self, feats: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Logits ``[...]`` of encoded features ``[...]``."""
        p = self.params
        out = p["bias"]
        for n, _ in self.layout.global_categorical:
            out = out + tf.gather(p[f"w_{n}"], tf.cast(feats[n], tf.int64))
        for n, _ in self.layout.global_multi_hot:
            out = out + _dot(tf.cast(feats[n], self.dtype), p[f"w_{n}"])
        for i, n in enumerate(self.layout.global_numeric):
            out = out + tf.cast(feats[n], self.dtype) * p["w_numeric"][i]
        if self.uses_user_id:
            out = out + tf.gather(p["w_user"], tf.cast(feats[USER_HASH], tf.int64))
        return out

    def design_matrix(self, data: Mapping[str, np.ndarray]) -> sp.csr_matrix:
        """Sparse design matrix ``[N, Σ widths]`` of flat encoded examples (columns = :meth:`blocks`)."""
        n = len(np.asarray(data[self.input_keys()[0]]))
        cols: List[sp.csr_matrix] = []
        rows = np.arange(n)
        for name, feat, width in self.blocks():
            if name == "w_numeric":
                x = np.stack([np.asarray(data[f], np.float64) for f in self.layout.global_numeric], 1)
                cols.append(sp.csr_matrix(x))
            elif feat in dict(self.layout.global_multi_hot):
                cols.append(sp.csr_matrix(np.asarray(data[feat], np.float64)))
            else:
                ids = np.asarray(data[feat], np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= width):
                    raise ValueError(f"feature {feat!r} has ids outside [0, {width}): "
                                     f"min {ids.min()}, max {ids.max()}")
                cols.append(sp.csr_matrix((np.ones(n), (rows, ids)), shape=(n, width)))
        return sp.hstack(cols, format="csr")

    def set_weights(self, coef: np.ndarray, intercept: float) -> None:
        """Assigns a flat coefficient vector (design-matrix column order) and the intercept."""
        offset = 0
        for name, _, width in self.blocks():
            self.params[name].assign(np.asarray(coef[offset:offset + width], np.float32))
            offset += width
        if offset != coef.shape[0]:
            raise ValueError(f"coefficient vector has {coef.shape[0]} entries, expected {offset}")
        self.params["bias"].assign(np.float32(intercept))


def _solve(x: sp.csr_matrix, y: np.ndarray, c: float, max_iter: int,
           init: Optional[Tuple[np.ndarray, float]] = None) -> logistic_newton.LogisticFit:
    """Newton-CG fit at one ``C`` (:mod:`trainer.logistic_newton`), started from
    ``init = (coef, intercept)`` when given."""
    return logistic_newton.fit_logistic(x, y, c, init=init, tol=SOLVER_TOL, max_iter=max_iter)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_linear(model: LinearModel, data: Mapping[str, np.ndarray],
               val_mask: Optional[np.ndarray] = None,
               c_grid: Sequence[float] = DEFAULT_C_GRID, max_iter: int = 100,
               refit_on_validation: bool = True) -> Dict[str, object]:
    """Fits the logistic regression; chooses ``C`` on validation rows, refits on all rows
    (``refit_on_validation=False``: on the non-validation rows only, e.g. a warm start whose
    validation rows still have to judge the model trained from it).

    The objective (scikit-learn, intercept not penalised)::

        min_w  ½‖w‖² + C Σ_i log(1 + exp(−y_i (x_i·w + b)))     (y in {−1, +1})

    Args:
        model: the :class:`LinearModel` whose weights are set.
        data: flat encoded examples ``{feature: [N, ...], "label": [N]}``.
        val_mask: ``[N]`` validation rows (training users' later interactions); None or all
            False: the first entry of ``c_grid`` is used without selection.
        c_grid: candidate inverse L2 strengths.
        max_iter: Newton iteration cap per fit (a fit that hits it is reported as not converged).
        refit_on_validation: the final fit includes the validation rows.

    The grid is fitted as a regularisation path (increasing ``C``, each fit warm-started from
    the previous optimum), and the final fit starts from the chosen ``C``'s optimum.

    Returns:
        ``{"C": chosen, "val_logloss": {C: loss}, "converged": bool, "seconds": float,
        "iterations": Newton iterations of every fit together, "cg_iterations": their CG
        iterations}``.
    """
    start = time.time()
    x = model.design_matrix(data)
    y = np.asarray(data[LABEL]).astype(np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{model.kind}: training labels hold one class only ({np.unique(y)}); "
                         "a logistic regression needs both")
    losses: Dict[float, float] = {}
    chosen = float(c_grid[0])
    init = None
    iterations = cg_iterations = 0
    if val_mask is not None and np.any(val_mask) and len(c_grid) > 1:
        val_mask = np.asarray(val_mask, bool)
        xt, yt, xv, yv = x[~val_mask], y[~val_mask], x[val_mask], y[val_mask]
        solutions = {}
        # The regularisation path, strongest penalty first, each fit started from the previous
        # solution: the optimum of a strictly convex problem does not depend on the start, and
        # neighbouring C's optima are close, so Newton needs far fewer iterations.
        for c in sorted(float(c) for c in c_grid):
            fit = _solve(xt, yt, c, max_iter, init)
            iterations += fit.iterations
            cg_iterations += fit.cg_iterations
            init = solutions[c] = (fit.coef, fit.intercept)
            losses[c] = _log_loss(yv, fit.predict_proba(xv))
        losses = {float(c): losses[float(c)] for c in c_grid}  # report in the grid's order
        chosen = min(losses, key=losses.get)
        init = solutions[chosen]  # the refit adds the validation rows: start from its optimum
    if not refit_on_validation and val_mask is not None and np.any(val_mask):
        keep = ~np.asarray(val_mask, bool)
        x, y = x[keep], y[keep]
    fit = _solve(x, y, chosen, max_iter, init)
    iterations += fit.iterations
    cg_iterations += fit.cg_iterations
    model.set_weights(fit.coef, fit.intercept)
    info = {"C": chosen, "val_logloss": losses, "converged": fit.converged,
            "seconds": time.time() - start, "iterations": iterations,
            "cg_iterations": cg_iterations}
    log.info("%s: C=%g (validation log loss %s), converged=%s, %d Newton / %d CG iterations, "
             "%.1fs", model.kind, chosen, {k: round(v, 4) for k, v in losses.items()},
             fit.converged, iterations, cg_iterations, info["seconds"])
    return info


def warm_start_wide(wide: Mapping[str, tf.Variable], fitted: LinearModel,
                    names: Optional[Mapping[str, str]] = None) -> List[str]:
    """Copies a fitted linear model into a deep model's wide part (warm start).

    Each ``w_<feature>`` goes to ``wide_<feature>``, ``w_numeric`` to ``wide_numeric``, ``w_user``
    to ``wide_user`` and ``bias`` to ``names.get("bias")`` (e.g. ``b_out`` or ``wide_bias``); the
    deep part then only has to learn the residual, and the model starts as good as the linear
    reference (early stopping can fall back to it).

    Args:
        wide: the deep model's variables by name.
        fitted: the fitted linear model.
        names: overrides of the target names (``{"bias": "b_out"}``).

    Returns:
        The target variable names assigned.

    Raises:
        ValueError: a target is missing or its shape differs (names both).
    """
    names = dict(names or {})
    done = []
    for src, var in fitted.params.items():
        dst = names.get(src, src.replace("w_", "wide_", 1))
        if dst not in wide:
            raise ValueError(f"warm start: the deep model has no variable {dst!r} for {src!r}")
        value = var.numpy()
        target = wide[dst]
        if tuple(target.shape) != value.shape:
            value = value.reshape(tuple(target.shape))  # e.g. the bias [] into b_out [1]
        target.assign(value)
        done.append(dst)
    return done
