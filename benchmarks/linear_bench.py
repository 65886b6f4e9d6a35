"""The linear floor's solver against scikit-learn's L-BFGS: ``limaml bench linear``.

On a prepared data folder (``limaml data prepare``), encoded with
:class:`trainer.local_encoder.LocalEncoder` and the validation rows of
:func:`trainer.validation.validation_rows`, for each kind (``linear``, ``linear_user_id``):

* ``newton``: :func:`trainer.linear.fit_linear` (the C path, warm-started, then the refit on every
  row; diagonally preconditioned Newton-CG, :mod:`trainer.logistic_newton`);
* ``lbfgs``: the same path with scikit-learn's ``LogisticRegression(solver="lbfgs", tol=1e-6)``,
  each C warm-started from the previous optimum, the refit from the chosen C's (what the linear
  references used before).

Prints a JSON list of rows ``{"kind", "solver", "seconds", "iterations", "C", "val_logloss",
"objective", "grad_max"}``, where ``objective`` and ``grad_max`` are F and max |∇F| of the final
fit (scikit-learn's scaling, :mod:`trainer.logistic_newton`) recomputed here for both solvers.

Usage: ``python -m benchmarks.linear_bench --data data/ml1m [--kinds linear,linear_user_id]``.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def _objective(x, y: np.ndarray, coef: np.ndarray, intercept: float, c: float):
    """``(F, max |∇F|)`` at ``(coef, intercept)``, written out independently of the solvers."""
    n = x.shape[0]
    z = np.asarray(x @ coef).ravel() + intercept
    f = float(np.mean(np.logaddexp(0.0, z) - y * z) + coef @ coef / (2 * c * n))
    r = (0.5 * (1.0 + np.tanh(0.5 * z)) - y) / n  # σ(z) without overflow
    g = np.concatenate([np.asarray(x.T @ r).ravel() + coef / (c * n), [r.sum()]])
    return f, float(np.abs(g).max())


def _lbfgs_path(x, y: np.ndarray, val: np.ndarray, grid: Sequence[float]) -> Dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    def fit(xs, ys, c, init):
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=2000, tol=1e-6,
                                 warm_start=init is not None)
        if init is not None:
            clf.coef_, clf.intercept_ = init[0].copy(), init[1].copy()
        clf.fit(xs, ys.astype(int))
        return clf

    start, iterations, init, solutions, losses = time.time(), 0, None, {}, {}
    for c in sorted(float(c) for c in grid):
        clf = fit(x[~val], y[~val], c, init)
        iterations += int(clf.n_iter_.max())
        init = solutions[c] = (clf.coef_, clf.intercept_)
        p = np.clip(clf.predict_proba(x[val])[:, 1], 1e-7, 1 - 1e-7)
        losses[c] = float(-np.mean(y[val] * np.log(p) + (1 - y[val]) * np.log(1 - p)))
    chosen = min(losses, key=losses.get)
    clf = fit(x, y, chosen, solutions[chosen])
    iterations += int(clf.n_iter_.max())
    return {"seconds": time.time() - start, "iterations": iterations, "C": chosen,
            "val_logloss": losses, "coef": clf.coef_[0], "intercept": float(clf.intercept_[0])}


def run(data_dir: str, kinds: Sequence[str] = ("linear", "linear_user_id"),
        solvers: Sequence[str] = ("newton", "lbfgs")) -> List[Dict[str, Any]]:
    """Fits each kind with each solver on ``data_dir``; see the module docstring."""
    from limaml.config import LimamlConfig
    from limaml.data.canonical import read_prepared
    from trainer import linear
    from trainer.layout import build_layout
    from trainer.local_encoder import LocalEncoder
    from trainer.validation import validation_rows

    frame = read_prepared(data_dir)
    cfg = LimamlConfig()
    enc = LocalEncoder(cfg.model.user_id_buckets).fit(frame)
    data = enc.encode(frame)
    layout = build_layout(cfg.model, enc.vocab_sizes)
    val = np.asarray(validation_rows(data, cfg.train), bool)
    y = np.asarray(data[linear.LABEL], np.float64)
    grid = cfg.train.linear_c_grid
    rows = []
    for kind in kinds:
        model = linear.LinearModel(layout, kind)
        x = model.design_matrix(data)
        for solver in solvers:
            if solver == "newton":
                start = time.time()
                info = linear.fit_linear(model, data, val, c_grid=grid)
                coef = np.concatenate([model.params[name].numpy().astype(np.float64).ravel()
                                       for name, _, _ in model.blocks()])
                out = {"seconds": time.time() - start, "iterations": info["iterations"],
                       "cg_iterations": info["cg_iterations"], "C": info["C"],
                       "val_logloss": info["val_logloss"], "coef": coef,
                       "intercept": float(model.params["bias"].numpy())}
            else:
                out = _lbfgs_path(x, y, val, grid)
            f, g = _objective(x, y, out.pop("coef"), out.pop("intercept"), out["C"])
            rows.append({"kind": kind, "solver": solver, "rows": int(x.shape[0]),
                         "columns": int(x.shape[1]), **out, "objective": f, "grad_max": g})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: prints the rows of :func:`run` as a JSON list."""
    p = argparse.ArgumentParser(prog="limaml bench linear", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="prepared data folder (limaml data prepare)")
    p.add_argument("--kinds", default="linear,linear_user_id")
    p.add_argument("--solvers", default="newton,lbfgs")
    a = p.parse_args(argv)
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    solvers = [s.strip() for s in a.solvers.split(",") if s.strip()]
    bad = [s for s in solvers if s not in ("newton", "lbfgs")]
    if bad or not set(kinds) <= {"linear", "linear_user_id"}:
        p.error(f"--kinds from linear,linear_user_id; --solvers from newton,lbfgs (got {kinds}, {solvers})")
    print(json.dumps(run(a.data, kinds, solvers), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
