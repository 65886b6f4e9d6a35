"""A learned-items reference on synthetic data: the generator's own model family, fitted by MAP.

:mod:`benchmarks.synthetic_bound` is handed every item vector; this reference must learn them,
as every model in the experiment must, from the same trainable rows. It is logistic matrix
factorisation of exactly the generator's form (:func:`limaml.data.synthetic.generate_world`)::

    z_n = g + b_i + (r_u + Σ_f T_f[c_f(u)]) · v_i        (u, i, c_f: the row's user, item, demographics)
    θ̂ = argmin_θ Σ_n bce(y_n, z_n) + λ_user/2 Σ |r_u|² + λ_item/2 (Σ |v_i|² + Σ_f |T_f|²) + λ_bias/2 Σ b_i²

fitted with L-BFGS on the split's trainable rows (every user's, evaluated users' histories
included, so an evaluated user's ``r_u`` is fitted on that user's rows), the λs chosen on the
validation split of ``limaml tune`` (training users' later rows), then scored on the query rows.
It is the best a learner of the right form can do with these rows; its gap to the oracle is what
the rows cannot tell (every user's personal taste from a short history, the tail items' vectors).

Usage::

    python -m benchmarks.synthetic_mf --data data/syn

Prints one JSON object: the validation AUC of every λ on the grid, the chosen λs, and AUC per
cohort of the reference and of the oracle on the query rows of the dataset's default protocol.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import optimize

from limaml.data import protocols
from schema import features as F

DEMOGRAPHICS = (F.AGE_BUCKET, F.GENDER, F.OCCUPATION, F.ZIP_PREFIX)
# λ_user x λ_item grid (λ_bias = λ_item); the generator draws r and v from N(0, 1) and scales
# their dot product by signal/√d ≈ 0.71, so the MAP precisions sit near 1 (the validation
# split picks λ_user 1-2 and λ_item 2-8 on the default synthetic data: most items have few rows).
GRID = (1.0, 2.0, 4.0, 8.0)


@dataclasses.dataclass
class MFParams:
    """Fitted parameters: ``g`` scalar, ``b [I]``, ``r [U, d]``, ``v [I, d]``, ``t`` list of ``[C_f, d]``."""

    g: float
    b: np.ndarray
    r: np.ndarray
    v: np.ndarray
    t: List[np.ndarray]


def _unpack(theta: np.ndarray, n_users: int, n_items: int, sizes: Sequence[int], d: int) -> MFParams:
    out, k = [], 1
    for rows in (n_items, n_users * d, n_items * d) + tuple(c * d for c in sizes):
        out.append(theta[k:k + rows])
        k += rows
    return MFParams(float(theta[0]), out[0], out[1].reshape(n_users, d), out[2].reshape(n_items, d),
                    [x.reshape(-1, d) for x in out[3:]])


def _user_vectors(p: MFParams, users: np.ndarray, demo: Sequence[np.ndarray]) -> np.ndarray:
    return p.r[users] + sum(t[c] for t, c in zip(p.t, demo))


def mf_logits(p: MFParams, users: np.ndarray, items: np.ndarray,
              demo: Sequence[np.ndarray]) -> np.ndarray:
    """Logits ``[N]`` of rows given by user, item and demographic codes (each ``[N]``)."""
    return p.g + p.b[items] + np.einsum("nd,nd->n", _user_vectors(p, users, demo), p.v[items])


def objective(theta: np.ndarray, users: np.ndarray, items: np.ndarray, demo: Sequence[np.ndarray],
              labels: np.ndarray, shape: tuple, lam_user: float, lam_item: float,
              lam_bias: float) -> tuple:
    """The MAP objective above and its gradient w.r.t. the flat parameter vector ``theta``."""
    n_users, n_items, sizes, d = shape
    p = _unpack(theta, n_users, n_items, sizes, d)
    uvec = _user_vectors(p, users, demo)
    z = p.g + p.b[items] + np.einsum("nd,nd->n", uvec, p.v[items])
    loss = float(np.sum(np.logaddexp(0.0, z) - labels * z))
    loss += 0.5 * (lam_user * np.sum(p.r ** 2) + lam_item * (np.sum(p.v ** 2) + sum(np.sum(t ** 2) for t in p.t))
                   + lam_bias * np.sum(p.b ** 2))
    e = 1.0 / (1.0 + np.exp(-z)) - labels                                   # dL/dz  [N]
    ev, eu = e[:, None] * p.v[items], e[:, None] * uvec                     # [N, d]

    def scatter(index, values, rows):
        return np.stack([np.bincount(index, values[:, j], minlength=rows) for j in range(d)], axis=1)
    grads = [np.array([e.sum()]),
             np.bincount(items, e, minlength=n_items) + lam_bias * p.b,
             (scatter(users, ev, n_users) + lam_user * p.r).ravel(),
             (scatter(items, eu, n_items) + lam_item * p.v).ravel()]
    grads += [(scatter(c, ev, len(t)) + lam_item * t).ravel() for t, c in zip(p.t, demo)]
    return loss, np.concatenate(grads)


def fit(users: np.ndarray, items: np.ndarray, demo: Sequence[np.ndarray], labels: np.ndarray,
        n_users: int, n_items: int, sizes: Sequence[int], dim: int, lam_user: float,
        lam_item: float, lam_bias: Optional[float] = None, seed: int = 0,
        max_iter: int = 500) -> MFParams:
    """MAP fit (L-BFGS) of the objective above on rows given by integer codes.

    Args:
        users, items: ``[N]`` codes in ``[0, n_users)`` / ``[0, n_items)``.
        demo: one ``[N]`` code array per demographic table, codes in ``[0, sizes[f])``.
        labels: ``[N]`` 0/1.
        dim: latent width d.
        lam_user, lam_item, lam_bias: prior precisions (``lam_bias`` defaults to ``lam_item``).
        seed: seed of the small random start of ``v`` (the objective is not convex).
    """
    rng = np.random.default_rng(seed)
    shape = (n_users, n_items, tuple(sizes), dim)
    theta0 = np.zeros(1 + n_items + (n_users + n_items + sum(sizes)) * dim)
    start = 1 + n_items + n_users * dim
    theta0[start:start + n_items * dim] = rng.normal(0.0, 0.1, n_items * dim)
    lam_bias = lam_item if lam_bias is None else lam_bias
    res = optimize.minimize(objective, theta0, jac=True, method="L-BFGS-B",
                            args=(users, items, demo, labels.astype(np.float64), shape,
                                  lam_user, lam_item, lam_bias),
                            options={"maxiter": max_iter, "gtol": 1e-6, "ftol": 1e-13})
    return _unpack(res.x, n_users, n_items, sizes, dim)


def _codes(rows: pd.DataFrame):
    users = pd.factorize(rows[F.USER_ID])[0]
    items = pd.factorize(rows[F.ITEM_ID])[0]
    demo = [pd.factorize(rows[c])[0] for c in DEMOGRAPHICS]
    return users, items, demo


def split_aucs(rows: pd.DataFrame, users_frame: pd.DataFrame, cohort_edges, dim: int,
               lam_user: float, lam_item: float) -> Dict[str, Optional[float]]:
    """Fits on a split's trainable rows; AUC per cohort on its query rows."""
    from trainer import experiment

    role = rows[protocols.ROLE].to_numpy()
    users, items, demo = _codes(rows)
    trainable, query = np.isin(role, protocols.TRAINABLE_ROLES), role == "query"
    p = fit(users[trainable], items[trainable], [c[trainable] for c in demo],
            rows[F.LABEL].to_numpy()[trainable], users.max() + 1, items.max() + 1,
            [c.max() + 1 for c in demo], dim, lam_user, lam_item)
    z = mf_logits(p, users[query], items[query], [c[query] for c in demo])
    cohort = users_frame.set_index(F.USER_ID)[protocols.COHORT].reindex(
        rows[F.USER_ID][query]).to_numpy(dtype=object)
    return experiment.cohort_aucs(rows[F.LABEL].to_numpy()[query], z, cohort,
                                  protocols.cohort_names(cohort_edges))


def reference(data_dir: str, grid: Sequence[float] = GRID) -> Dict[str, object]:
    """λs chosen on the validation split, then AUC per cohort on the query rows (and the oracle's)."""
    from limaml.commands.experiment import _frame
    from limaml.config import default_protocol
    from limaml.data import canonical, synthetic
    from trainer import experiment

    manifest = canonical.read_manifest(data_dir)
    if manifest.get("dataset") != "synthetic" or not manifest.get("generator"):
        raise ValueError(f"{data_dir} is not a prepared synthetic dataset (manifest dataset "
                         f"{manifest.get('dataset')!r}); run `limaml data prepare synthetic`")
    dim = int(synthetic.SyntheticConfig(**manifest["generator"]).latent_dim)
    frame, dataset = _frame(data_dir)
    protocol = default_protocol(dataset)
    val_rows, val_users = experiment.validation_split(frame, protocol)
    search = []
    for lam_user, lam_item in itertools.product(grid, grid):
        auc = split_aucs(val_rows, val_users, protocol.cohort_edges, dim, lam_user, lam_item)
        search.append({"lam_user": lam_user, "lam_item": lam_item, "val_auc": auc["overall"]})
        print(f"[synthetic_mf] λ_user {lam_user} λ_item {lam_item}: validation AUC {auc['overall']}",
              file=sys.stderr, flush=True)
    best = max(search, key=lambda s: s["val_auc"])
    rows, users = experiment.split(frame, protocol)
    query = rows[rows[protocols.ROLE] == "query"]
    cohort = users.set_index(F.USER_ID)[protocols.COHORT].reindex(query[F.USER_ID]).to_numpy(dtype=object)
    return {"search": search, "chosen": {k: best[k] for k in ("lam_user", "lam_item")},
            "learned_items_map": split_aucs(rows, users, protocol.cohort_edges, dim,
                                            best["lam_user"], best["lam_item"]),
            "oracle": experiment.cohort_aucs(query[F.LABEL].to_numpy(), query[F.ORACLE_PROB].to_numpy(),
                                             cohort, protocols.cohort_names(protocol.cohort_edges))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a `limaml data prepare synthetic` output")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data):
        parser.error(f"--data {args.data} is not a folder")
    print(json.dumps(reference(args.data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
