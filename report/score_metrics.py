"""A model's ``metrics.json`` entry computed from its per-row scores (no TFMA run).

The Report component scores every served model on the same evaluation rows
(``components/report/scoring.py``). A scored model that no TFMA Evaluator ran on (the multi-block
``limaml_multi`` until the pipeline gives it one) gets its ``models.<name>`` entry from those
rows, with the same shape ``M = {"overall": S, "cohorts": {cohort: S}}`` as a TFMA-read model
(:mod:`report.metrics_schema`). Per slice:

* ``auc``: exact rank AUC of the slice's rows, ties counted 1/2 (:func:`report.paired.weighted_auc`
  with unit weights); TFMA's AUC is thresholded (10000 thresholds), so the two can differ by
  ~1e-4. ``null`` where the slice has one class only.
* ``auc_ci95``: percentile interval of the AUC over the cluster bootstrap of the slice's users
  (:func:`report.paired.resampled_aucs`: with the same seed, the same resamples as the paired
  comparisons); TFMA's intervals are jackknife / Poisson-bootstrap t-intervals over rows.
* ``logloss``: mean of -[y log p + (1-y) log(1-p)], p clipped to [1e-7, 1 - 1e-7]
  (:func:`trainer.evaluate.log_loss`, the definition of ``report.tfma_metrics.LogLoss``).
* ``examples``, ``users``: rows and distinct users of the slice.

References:
    Field, Welsh, Bootstrapping clustered data, JRSS-B 69(3), 2007 (resampling whole clusters).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

from report import paired as rp
from report.metrics_schema import DEFAULT_COHORTS, OVERALL


def slice_stats(slice_name: str, users: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                n_resamples: int, seed: int, confidence: float = 0.95) -> Dict[str, Any]:
    """One slice's ``S`` entry from its rows.

    Args:
        slice_name: ``overall`` or a cohort (salts the bootstrap stream, as in the comparisons).
        users: ``[N]`` user of each row.
        labels: ``[N]`` 0/1 labels.
        scores: ``[N]`` predicted probabilities.
        n_resamples: bootstrap resamples of users for the interval.
        seed: bootstrap seed.
        confidence: coverage of the interval (stored as ``auc_ci95`` whatever the value).

    Returns:
        ``{"auc", "auc_ci95", "logloss", "examples", "users"}``.
    """
    from trainer.evaluate import log_loss  # TensorFlow, only when a report is written

    n = int(len(users))
    n_users = int(np.unique(users).size)
    if n == 0:
        return {"auc": None, "auc_ci95": None, "logloss": None, "examples": 0, "users": 0}
    out: Dict[str, Any] = {"auc": None, "auc_ci95": None, "logloss": log_loss(labels, scores),
                           "examples": n, "users": n_users}
    if labels.all() or not labels.any():
        return out
    observed, aucs, _ = rp.resampled_aucs(slice_name, users, labels, {"model": scores},
                                          n_resamples, seed)
    out["auc"] = float(observed["model"])
    finite = aucs["model"][np.isfinite(aucs["model"])]
    if len(finite):
        alpha = 100.0 * (1.0 - confidence) / 2.0
        lo, hi = np.percentile(finite, [alpha, 100.0 - alpha])
        out["auc_ci95"] = [float(lo), float(hi)]
    return out


def model_metrics_from_scores(user_ids: Any, labels: Any, scores: Any, cohorts: Any,
                              cohort_names: Sequence[str] = DEFAULT_COHORTS,
                              n_resamples: int = 1000, seed: int = 0,
                              confidence: float = 0.95) -> Dict[str, Any]:
    """A model's ``M`` entry (overall and every cohort) from its scores on the evaluation rows.

    Args:
        user_ids: ``[N]`` user of each row.
        labels: ``[N]`` 0/1 labels.
        scores: ``[N]`` the model's predicted probabilities on those rows.
        cohorts: ``[N]`` cohort name of each row (compared as strings with ``cohort_names``).
        cohort_names: the cohorts to report (a cohort without rows gets nulls and 0 counts).
        n_resamples: bootstrap resamples of users per slice.
        seed: bootstrap seed.
        confidence: interval coverage.

    Returns:
        ``{"overall": S, "cohorts": {cohort: S}}``.

    Raises:
        ValueError: mismatched lengths, labels other than 0/1, non-finite scores.
    """
    users = np.asarray(user_ids)
    n = len(users)
    y = rp.as_labels(labels, n)
    s = rp.as_scores(scores, n)
    cohort_of_row = np.asarray(cohorts).astype(str)
    if cohort_of_row.shape != (n,):
        raise ValueError(f"cohorts must have shape ({n},), got {cohort_of_row.shape}")

    def stats(name: str, mask: np.ndarray) -> Dict[str, Any]:
        return slice_stats(name, users[mask], y[mask], s[mask], n_resamples, seed, confidence)

    return {"overall": stats(OVERALL, np.ones(n, dtype=bool)),
            "cohorts": {str(c): stats(str(c), cohort_of_row == str(c)) for c in cohort_names}}
