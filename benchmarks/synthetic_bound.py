"""A reachable ceiling on synthetic data: the items and demographics known, the user's own taste
estimated from the user's history.

The oracle's AUC (``oracle_prob``) also knows every user's personal taste ``user_noise · ε``,
which no model can know from a short history. This reference knows everything a perfect model
could learn from a large population (every item vector and bias, the demographic tables) and
estimates each evaluated user's personal part by MAP from the user's trainable rows::

    u = demo_u + r,   r ~ N(0, user_noise² I)
    r̂ = argmin_r Σ_s bce(y_s, b_i + global_bias + signal/√d · (demo_u + r)·v_i) + |r|² / (2 user_noise²)

(Newton's method, batched over users). What it scores per cohort is about what the synthetic data
allow; the gap between it and the oracle is the users' unknowable personal noise.

Usage::

    python -m benchmarks.synthetic_bound --data data/syn [--validation]

Prints one JSON object: AUC per cohort of the reference and of the oracle on the query rows of the
dataset's default protocol (``--validation``: on the validation split ``limaml tune`` uses).
Synthetic data with a user × genre taste (``--genre-taste``) is not supported.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, Optional

import numpy as np
import pandas as pd

from limaml.data import protocols, synthetic
from schema import features as F


def map_personal_part(item_vectors: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
                      mask: np.ndarray, prior_mean: np.ndarray, scale: float, noise: float,
                      iterations: int = 25) -> np.ndarray:
    """MAP of each user's personal part ``r`` under ``r ~ N(0, noise² I)``, batched over users.

    Args:
        item_vectors: ``[U, H, d]`` item vectors of each user's history rows (padded).
        offsets: ``[U, H]`` item bias + global bias of those rows.
        labels: ``[U, H]`` 0/1 labels.
        mask: ``[U, H]`` 1 for real rows.
        prior_mean: ``[U, d]`` the demographic part ``demo_u``.
        scale: ``signal / √d``.
        noise: ``user_noise`` (> 0).
        iterations: Newton steps.

    Returns:
        ``[U, d]`` r̂ (0 for users without rows).
    """
    users, _, d = item_vectors.shape
    x = scale * item_vectors
    r = np.zeros((users, d))
    eye = np.eye(d)[None] / noise ** 2
    for _ in range(iterations):
        z = offsets + np.einsum("uhd,ud->uh", x, prior_mean + r)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = np.einsum("uhd,uh->ud", x, mask * (p - labels)) + r / noise ** 2
        hess = np.einsum("uhd,uh,uhe->ude", x, mask * p * (1.0 - p), x) + eye
        r = r - np.linalg.solve(hess, grad[..., None])[..., 0]
    return r


def _index(ids: pd.Series) -> np.ndarray:
    """``u123`` / ``i45`` -> 123 / 45 (the generator's row of that user / item)."""
    return ids.astype(str).str[1:].astype(np.int64).to_numpy()


def known_items_logits(world: synthetic.World, cfg: synthetic.SyntheticConfig,
                       rows: pd.DataFrame) -> np.ndarray:
    """Logits of the query rows of ``rows`` (a split with a ``role`` column), in their order."""
    if cfg.genre_taste > 0:
        raise ValueError("the known-items reference models no user x genre taste; use genre_taste 0")
    role = rows[protocols.ROLE].to_numpy()
    users, items = _index(rows[F.USER_ID]), _index(rows[F.ITEM_ID])
    query = role == "query"
    hist = np.isin(role, protocols.TRAINABLE_ROLES) & np.isin(users, users[query])
    q_users = np.unique(users[query])
    pos = np.searchsorted(q_users, users[hist])
    # pad each query user's history rows: [U, H]
    order = np.argsort(pos, kind="stable")
    counts = np.bincount(pos, minlength=len(q_users))
    width = max(int(counts.max()) if counts.size else 0, 1)
    slot = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    h_items = np.zeros((len(q_users), width), np.int64)
    labels = np.zeros((len(q_users), width))
    mask = np.zeros((len(q_users), width))
    h_items[pos[order], slot] = items[hist][order]
    labels[pos[order], slot] = rows[F.LABEL].to_numpy()[hist][order]
    mask[pos[order], slot] = 1.0
    scale = cfg.signal / np.sqrt(cfg.latent_dim)
    prior = world.demographic_vectors[q_users]
    r = map_personal_part(world.item_vectors[h_items], world.item_bias[h_items] + cfg.global_bias,
                          labels, mask, prior, scale, cfg.user_noise)
    u = (prior + r)[np.searchsorted(q_users, users[query])]
    i = items[query]
    return world.item_bias[i] + cfg.global_bias + scale * np.einsum("nd,nd->n", u, world.item_vectors[i])


def bound(data_dir: str, validation: bool = False) -> Dict[str, Dict[str, Optional[float]]]:
    """AUC per cohort of the known-items reference and of the oracle on a prepared synthetic set."""
    from limaml.commands.experiment import _frame
    from limaml.config import default_protocol
    from limaml.data import canonical
    from trainer import experiment

    manifest = canonical.read_manifest(data_dir)
    gen = manifest.get("generator")
    if manifest.get("dataset") != "synthetic" or not gen:
        raise ValueError(f"{data_dir} is not a prepared synthetic dataset (manifest dataset "
                         f"{manifest.get('dataset')!r}); run `limaml data prepare synthetic`")
    cfg = synthetic.SyntheticConfig(**gen)
    world = synthetic.generate_world(cfg)
    frame, dataset = _frame(data_dir)
    if len(frame) != len(world.frame):
        raise ValueError(f"{data_dir} holds {len(frame)} rows, the generator {len(world.frame)}: "
                         "the data were changed after `limaml data prepare`")
    protocol = default_protocol(dataset)
    rows, users = (experiment.validation_split if validation else experiment.split)(frame, protocol)
    query = rows[rows[protocols.ROLE] == "query"]
    cohort_of = users.set_index(F.USER_ID)[protocols.COHORT]
    cohort = cohort_of.reindex(query[F.USER_ID]).to_numpy(dtype=object)
    names = protocols.cohort_names(protocol.cohort_edges)
    y = query[F.LABEL].to_numpy()
    return {"known_items_map": experiment.cohort_aucs(y, known_items_logits(world, cfg, rows), cohort, names),
            "oracle": experiment.cohort_aucs(y, query[F.ORACLE_PROB].to_numpy(), cohort, names)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a `limaml data prepare synthetic` output")
    parser.add_argument("--validation", action="store_true",
                        help="score the validation split of `limaml tune` instead of the query rows")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data):
        parser.error(f"--data {args.data} is not a folder")
    print(json.dumps(bound(args.data, args.validation)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
