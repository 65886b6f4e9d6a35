"""Cross-fitted evaluation: every user evaluated once, by models that never saw its later rows.

The budget protocol evaluates a fifth of the users (``eval_fraction`` 0.2), so a small cohort
(ML-1M's 1-4 holds about 120 users) gives wide paired intervals. Cross-fitting splits the users
into K folds by the stable hash (``ProtocolConfig.eval_folds``) and runs
:func:`trainer.experiment.run` once per fold: fold k's users are evaluated (their first
``history_size`` rows trainable, the next ones scored) while every other user trains. Each user
lands in exactly one fold, so the pooled query rows hold every user once, and a model scored on
them was always trained with the same number of training users as the one-split protocol.

Pooling: per model and seed, the folds' per-row scores are concatenated and the AUCs are
computed on the pooled rows (each fold has its own trained model, so pooled AUCs also count
calibration differences between folds; both sides of a paired comparison are pooled the same
way). :func:`trainer.experiment.report` then gives means, spreads and the paired bootstrap over
users on the pooled rows, and ``auc_per_fold`` keeps each fold's own AUCs.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from limaml.config import LimamlConfig
from limaml.data import protocols
from trainer import experiment


def fold_config(cfg: LimamlConfig, folds: int, fold: int) -> LimamlConfig:
    """``cfg`` with the budget protocol evaluating fold ``fold`` of ``folds``."""
    if cfg.protocol.name != "budget":
        raise ValueError(f"cross-fitting needs the budget protocol, not {cfg.protocol.name!r}: "
                         "set protocol.name to 'budget' or run without --folds")
    protocol = dataclasses.replace(cfg.protocol, eval_folds=folds, eval_fold=fold)
    return dataclasses.replace(cfg, protocol=protocol)


def merge_folds(results: Sequence[Mapping[str, object]], cohorts: Sequence[str]) -> Dict[str, object]:
    """Pools per-fold :func:`trainer.experiment.run` results into one result of the same shape.

    Args:
        results: one result per fold, each with per-row ``labels``, ``users``, ``cohort``,
            ``support_slice``, optional ``oracle_prob`` ``[M_k]`` and ``scores``
            ``{model: {seed: [M_k]}}``; the folds' users must be disjoint.
        cohorts: cohort names.

    Returns:
        A result over the ``sum_k M_k`` pooled rows: AUCs recomputed on them, ``seconds``
        summed over folds per model and seed, ``auc_per_fold`` ``{model: {fold: {seed: aucs}}}``.

    Raises:
        ValueError: a user is evaluated in two folds, or the folds ran different models/seeds.
    """
    seen: Dict[str, int] = {}
    for k, r in enumerate(results):
        for u in np.unique(np.asarray(r["users"]).astype(str)):
            if u in seen:
                raise ValueError(f"user {u} is evaluated in folds {seen[u]} and {k}; the folds "
                                 "must partition the users (same protocol seed and eval_folds)")
            seen[u] = k
    first = results[0]["scores"]
    for k, r in enumerate(results):
        got = {m: sorted(v) for m, v in r["scores"].items()}
        if got != {m: sorted(v) for m, v in first.items()}:
            raise ValueError(f"fold {k} ran models/seeds {got}, fold 0 "
                             f"{ {m: sorted(v) for m, v in first.items()} }")

    def cat(key: str) -> np.ndarray:
        return np.concatenate([np.asarray(r[key]) for r in results])

    labels, cohort, by_support = cat("labels"), cat("cohort"), cat("support_slice")
    out: Dict[str, object] = {
        "labels": labels, "users": cat("users"), "cohort": cohort, "support_slice": by_support,
        "n_query": int(labels.size), "n_train": [int(r["n_train"]) for r in results],
        "folds": len(results), "scores": {}, "auc": {}, "auc_by_support": {}, "seconds": {},
        "auc_per_fold": {m: {k: r["auc"][m] for k, r in enumerate(results)} for m in first}}
    if all("oracle_prob" in r for r in results):
        out["oracle_prob"] = cat("oracle_prob")
        out["oracle"] = experiment.cohort_aucs(labels, out["oracle_prob"], cohort, cohorts)
    for name, by_seed in first.items():
        for seed in by_seed:
            s = np.concatenate([np.asarray(r["scores"][name][seed]) for r in results])
            out["scores"].setdefault(name, {})[seed] = s
            out["auc"].setdefault(name, {})[seed] = experiment.cohort_aucs(labels, s, cohort, cohorts)
            out["auc_by_support"].setdefault(name, {})[seed] = experiment.cohort_aucs(
                labels, s, by_support, experiment.SUPPORT_SLICE_NAMES)
        out["seconds"][name] = [round(float(sum(r["seconds"][name][i] for r in results)), 1)
                                for i in range(len(by_seed))]
    return out


def run(frame: pd.DataFrame, cfg: LimamlConfig, folds: int, models: Sequence[str],
        seeds: Sequence[int] = (0,), progress: Optional[Callable[[str], None]] = None,
        tuned: Optional[Mapping[str, Mapping[str, Mapping[str, object]]]] = None,
        configs: Optional[Mapping[str, LimamlConfig]] = None) -> Dict[str, object]:
    """Runs :func:`trainer.experiment.run` on each of ``folds`` folds and pools the results.

    Args:
        frame: canonical interactions.
        cfg: settings; its protocol must be ``budget`` (its ``eval_fraction`` is unused).
        folds: K >= 2.
        models, seeds, progress, tuned, configs: as in :func:`trainer.experiment.run`; each
            variant in ``configs`` gets the same fold as ``cfg``.

    Returns:
        :func:`merge_folds`' pooled result, ready for :func:`trainer.experiment.report`.
    """
    if folds < 2:
        raise ValueError(f"folds {folds} must be >= 2 for cross-fitting")
    cohorts = protocols.cohort_names(cfg.protocol.cohort_edges)
    results: List[Mapping[str, object]] = []
    for k in range(folds):
        def fold_progress(line: str, k: int = k) -> None:
            if progress:
                progress(f"fold {k + 1}/{folds}: {line}")
        fold_progress("splitting and encoding")
        variants = {v: fold_config(c, folds, k) for v, c in (configs or {}).items()}
        results.append(experiment.run(frame, fold_config(cfg, folds, k), models, seeds=seeds,
                                      configs=variants, progress=fold_progress, tuned=tuned))
    return merge_folds(results, cohorts)
