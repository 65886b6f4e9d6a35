"""Paired comparisons of models scored on the same evaluation rows, and baseline sanity checks.

A claim that LiMAML beats another model needs a *paired* interval of the AUC difference: both
models score the same query rows, and the rows of one user are not independent (same person,
same history), so the resampling unit is the user. :func:`paired_bootstrap` runs a cluster
bootstrap over users: a resample draws the slice's users with replacement, every drawn user
brings all of its rows in the slice, and both models (all models, in fact) are scored on that
same resample. A resample is a vector of integer row weights (the multiplicity of the row's
user), so the AUCs of a block of resamples are one weighted rank-AUC of a ``[resamples, N]``
weight matrix (:func:`weighted_auc`), without a Python loop over resamples or users.

:func:`baseline_checks` flags a DNN baseline that does not beat its linear counterpart (a sign
that it is under-trained, which would flatter any model compared with it).

Shapes of the results (stored in ``metrics.json``; see :mod:`report.metrics`)::

    paired_bootstrap -> {"<reference>_vs_<other>": {"overall": C, "cohorts": {cohort: C}}}
    C = {"delta": float|null, "ci95": [lo, hi]|null, "p_value": float|null,
         "users": int, "examples": int, "resamples": int}
    baseline_checks -> {"global_dnn": B, "wide_deep_id": B}   (pairs whose models are present)
    B = {"counterpart": str, "auc": float|null, "counterpart_auc": float|null,
         "delta": float|null, "under_trained": bool}

References:
    Efron, Tibshirani, An Introduction to the Bootstrap (1993) §6 (percentile intervals);
    Field, Welsh, Bootstrapping clustered data, JRSS-B 69(3), 2007 (resampling whole clusters).
"""
from __future__ import annotations

import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from limaml.config import DEFAULT_COHORT_EDGES
from limaml.data.protocols import cohort_names as _cohort_names

DEFAULT_COHORTS: Tuple[str, ...] = tuple(_cohort_names(DEFAULT_COHORT_EDGES))
OVERALL = "overall"
ORACLE = "oracle"
# (DNN baseline, its linear counterpart on the same features)
BASELINE_COUNTERPARTS: Tuple[Tuple[str, str], ...] = (("global_dnn", "linear"),
                                                       ("wide_deep_id", "linear_user_id"))
COMPARISON_KEYS: Tuple[str, ...] = ("delta", "ci95", "p_value", "users", "examples", "resamples")
BASELINE_CHECK_KEYS: Tuple[str, ...] = ("counterpart", "auc", "counterpart_auc", "delta", "under_trained")
# Upper bound on the elements of one [resamples, rows] block (float64: 8 bytes each; a few such
# arrays are alive at once), which caps the chunk size on large slices.
_MAX_BLOCK_ELEMENTS = 1 << 21


def comparison_key(reference: str, other: str) -> str:
    """The ``comparisons`` key of ``reference`` vs ``other``: ``"<reference>_vs_<other>"``."""
    return f"{reference}_vs_{other}"


# ---------------------------------------------------------------------------------------------
# weighted rank AUC


class _SortedScores:
    """One model's scores sorted once, with their tie groups, for repeated weighted AUCs.

    Attributes:
        order: ``[N]`` permutation sorting the scores ascending (stable).
        positive: ``[N]`` float64, 1.0 where the label (in sorted order) is positive.
        starts: ``[G]`` index of the first sorted row of each group of equal scores.
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="mergesort")
        sorted_scores = scores[self.order]
        self.positive = labels[self.order].astype(np.float64)
        if len(sorted_scores):
            new_group = np.empty(len(sorted_scores), dtype=bool)
            new_group[0] = True
            np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_group[1:])
            self.starts = np.flatnonzero(new_group)
        else:
            self.starts = np.zeros(0, dtype=np.int64)

    def auc(self, sorted_weights: np.ndarray) -> np.ndarray:
        """Weighted AUCs for weights already in sorted-score order.

        Args:
            sorted_weights: ``[R, N]`` non-negative weights, columns in ``order``.

        Returns:
            ``[R]`` float64: P(score of a positive > score of a negative) + 1/2 P(tie), pairs
            weighted by the product of their weights; NaN where a class has zero total weight.
        """
        r = sorted_weights.shape[0]
        if sorted_weights.shape[1] == 0:
            return np.full(r, np.nan)
        pos_w = sorted_weights * self.positive              # [R, N]
        neg_w = sorted_weights - pos_w                      # [R, N]
        pos_g = np.add.reduceat(pos_w, self.starts, axis=1)  # [R, G] positive weight per tie group
        del pos_w
        neg_g = np.add.reduceat(neg_w, self.starts, axis=1)  # [R, G] negative weight per tie group
        del neg_w
        neg_below = np.cumsum(neg_g, axis=1)                  # [R, G] negatives scored <= group
        neg_below -= 0.5 * neg_g                              # strictly below + half of the ties
        numerator = np.einsum("rg,rg->r", pos_g, neg_below)
        denominator = pos_g.sum(axis=1) * neg_g.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = numerator / denominator
        out[denominator <= 0] = np.nan
        return out


def as_labels(labels: Any, n: Optional[int] = None) -> np.ndarray:
    """``labels`` as a 1-D bool array (0/1 or bool in; ``n`` rows when given); ValueError else."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if n is not None and len(y) != n:
        raise ValueError(f"labels has {len(y)} rows, expected {n}")
    if y.dtype == bool:
        return y
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
    return y.astype(bool)


def as_scores(scores: Any, n: int, name: str = "scores") -> np.ndarray:
    """``scores`` as finite float64 ``[n]``; ValueError (naming ``name``) else."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(s)).sum())} non-finite values")
    return s


def weighted_auc(labels: Any, scores: Any, weights: Any) -> np.ndarray:
    """Weighted ROC AUC, for one weight vector or a matrix of them at once.

    AUC = sum over (positive i, negative j) of w_i w_j ([s_i > s_j] + 1/2 [s_i == s_j]),
    divided by (sum of positive weights) x (sum of negative weights): the area under the
    weighted ROC curve, as ``sklearn.metrics.roc_auc_score(..., sample_weight=w)`` computes it.
    The scores are sorted once; each weight row costs O(N).

    Args:
        labels: ``[N]`` 0/1 (or bool) labels.
        scores: ``[N]`` finite scores (ties allowed).
        weights: ``[N]`` or ``[R, N]`` finite non-negative weights (e.g. bootstrap multiplicities).

    Returns:
        float64 array of shape ``()`` for ``[N]`` weights, ``[R]`` for ``[R, N]``; NaN where the
        positives or the negatives have zero total weight (AUC undefined).

    Raises:
        ValueError: mismatched shapes, labels other than 0/1, non-finite scores, negative or
            non-finite weights.
    """
    y = as_labels(labels)
    s = as_scores(scores, len(y))
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] != len(y):
        raise ValueError(f"weights must have shape ({len(y)},) or (R, {len(y)}), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    sorted_scores = _SortedScores(y, s)
    out = sorted_scores.auc(np.atleast_2d(w)[:, sorted_scores.order])
    return out[0] if w.ndim == 1 else out


# ---------------------------------------------------------------------------------------------
# paired cluster bootstrap


def _null_comparison(users: int, examples: int) -> Dict[str, Any]:
    return {"delta": None, "ci95": None, "p_value": None, "users": int(users), "examples": int(examples),
            "resamples": 0}


def _bootstrap_p(deltas: np.ndarray, observed: float) -> float:
    """Two-sided bootstrap p: 2 x share of resampled deltas on the other side of 0 (0 included)."""
    if observed > 0:
        share = float(np.mean(deltas <= 0))
    elif observed < 0:
        share = float(np.mean(deltas >= 0))
    else:
        share = 1.0
    return min(1.0, 2.0 * share)


def _slice_seed(seed: int, slice_name: str) -> np.random.SeedSequence:
    """A seed per slice, so a slice's draws do not depend on which other slices exist."""
    return np.random.SeedSequence([int(seed), zlib.crc32(slice_name.encode("utf-8"))])


def resampled_aucs(slice_name: str, users: np.ndarray, labels: np.ndarray,
                   scores: Mapping[Any, np.ndarray], n_resamples: int, seed: int,
                   chunk_size: int = 200) -> Tuple[Dict[Any, float], Dict[Any, np.ndarray], int]:
    """AUC of every model on a slice's real rows and on the same user resamples.

    Args:
        slice_name: salts the slice's random stream (with ``seed``).
        users: ``[N]`` user of each row.
        labels: ``[N]`` 0/1 labels (both classes present).
        scores: model key -> ``[N]`` scores.
        n_resamples: R.
        seed: resampling seed.
        chunk_size: resamples scored at once.

    Returns:
        ``(observed {key: auc}, resampled {key: [R] aucs (NaN where a class drew no weight)},
        users in the slice)``; the draws are shared by every model.
    """
    user_index = np.unique(users, return_inverse=True)[1].reshape(-1)  # [N] user of each row, 0..U-1
    n_rows = len(users)
    n_users = int(user_index.max()) + 1
    models = list(scores)
    prepared = {m: _SortedScores(labels, scores[m]) for m in models}
    ones = np.ones((1, n_rows))
    observed = {m: float(prepared[m].auc(ones[:, prepared[m].order])[0]) for m in models}
    # the user (0..U-1) of each row in each model's sorted order
    users_sorted = {m: user_index[prepared[m].order] for m in models}
    rng = np.random.default_rng(_slice_seed(seed, slice_name))
    chunk = max(1, min(chunk_size, _MAX_BLOCK_ELEMENTS // max(n_rows, n_users, 1)))
    aucs = {m: np.empty(n_resamples) for m in models}
    done = 0
    while done < n_resamples:
        r = min(chunk, n_resamples - done)
        draws = rng.integers(0, n_users, size=(r, n_users))                       # [r, U] users drawn
        offsets = (np.arange(r) * n_users)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=r * n_users)
        counts = counts.reshape(r, n_users).astype(np.float64)                    # [r, U] multiplicity
        for m in models:
            aucs[m][done:done + r] = prepared[m].auc(counts[:, users_sorted[m]])  # [r]
        done += r
    return observed, aucs, n_users


def summarize_deltas(delta: float, resampled: np.ndarray, users: int, examples: int,
                     confidence: float = 0.95) -> Dict[str, Any]:
    """One comparison entry ``C`` from the real-row difference and the resampled differences."""
    alpha = 100.0 * (1.0 - confidence) / 2.0
    resampled = resampled[np.isfinite(resampled)]  # resamples where one class drew no weight
    entry = {"delta": float(delta), "ci95": None, "p_value": None, "users": users,
             "examples": examples, "resamples": int(len(resampled))}
    if len(resampled):
        lo, hi = np.percentile(resampled, [alpha, 100.0 - alpha])
        entry["ci95"] = [float(lo), float(hi)]
        entry["p_value"] = _bootstrap_p(resampled, delta)
    return entry


def _compare_slice(slice_name: str, users: np.ndarray, labels: np.ndarray,
                   scores: Mapping[str, np.ndarray], reference: str, others: Sequence[str],
                   n_resamples: int, seed: int, confidence: float,
                   chunk_size: int) -> Dict[str, Dict[str, Any]]:
    """Paired bootstrap of one slice's rows; ``{other: C}``."""
    n_rows = len(users)
    if n_rows == 0 or labels.all() or not labels.any():  # AUC undefined on the real rows
        n_users = int(np.unique(users).size)
        return {o: _null_comparison(n_users, n_rows) for o in others}
    models = [reference, *others]
    observed, aucs, n_users = resampled_aucs(slice_name, users, labels,
                                             {m: scores[m] for m in models}, n_resamples, seed,
                                             chunk_size)
    return {other: summarize_deltas(observed[reference] - observed[other],
                                    aucs[reference] - aucs[other], n_users, n_rows, confidence)
            for other in others}


def paired_bootstrap(user_ids: np.ndarray, labels: np.ndarray, scores: Mapping[str, np.ndarray],
                     cohorts: np.ndarray, reference: str = "limaml",
                     cohort_names: Sequence[str] = DEFAULT_COHORTS, n_resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95,
                     chunk_size: int = 200) -> Dict[str, Dict[str, Any]]:
    """AUC(reference) - AUC(other) per slice, with a paired cluster-bootstrap interval over users.

    For each slice (all rows, then each cohort's rows) and each model other than ``reference``
    (and other than ``oracle``, which is a ceiling, not a competitor): ``delta`` is the AUC
    difference on the slice's real rows; the interval and p-value come from ``n_resamples``
    resamples of the slice's users with replacement (each drawn user brings all its rows in the
    slice; every model is scored on the same resample). A resample is a row-weight vector, the
    multiplicity of each row's user, and blocks of ``chunk_size`` resamples are scored at once
    with a weighted rank AUC (scores sorted once per model and slice).

    Args:
        user_ids: ``[N]`` user of each evaluation row (any hashable dtype numpy can sort).
        labels: ``[N]`` 0/1 labels.
        scores: model name -> ``[N]`` predicted probabilities on the same rows, e.g. ``limaml``,
            ``global_dnn``, ``wide_deep_id``, ``linear``, ``linear_user_id`` (``oracle`` skipped).
        cohorts: ``[N]`` cohort name of each row (compared as strings with ``cohort_names``).
        reference: the model every other one is compared with.
        cohort_names: the cohorts to report (a cohort without rows gets null values, 0 counts).
        n_resamples: bootstrap resamples per slice.
        seed: seeds the resampling (one stream per slice, derived from ``seed`` and the slice
            name): the same inputs and seed give the same intervals.
        confidence: coverage of the percentile interval (stored as ``ci95`` whatever the value).
        chunk_size: resamples scored at once (memory ~ a few x chunk x N x 8 bytes; lowered
            automatically on large slices).

    Returns:
        ``{"<reference>_vs_<other>": {"overall": C, "cohorts": {cohort: C}}}``, others in the
        order of ``scores``, with ``C = {"delta": AUC(reference) - AUC(other), "ci95": [lo, hi]
        (percentile interval of the resampled deltas), "p_value": 2 x share of resampled deltas
        on the other side of 0 (0 counts as the other side; 1 when delta is 0), capped at 1,
        "users": distinct users, "examples": rows, "resamples": resamples with a defined AUC
        (those where a class drew no weight are dropped)}``. ``delta``, ``ci95`` and
        ``p_value`` are None where the slice has one class only (AUC undefined) or no rows.

    Raises:
        ValueError: ``reference`` not in ``scores``, mismatched lengths, labels other than 0/1,
            non-finite scores, bad ``n_resamples``/``confidence``/``chunk_size``.
    """
    if reference not in scores:
        raise ValueError(f"reference model {reference!r} not in scores {list(scores)}")
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    users = np.asarray(user_ids)
    if users.ndim != 1:
        raise ValueError(f"user_ids must be 1-D, got shape {users.shape}")
    n = len(users)
    y = as_labels(labels, n)
    cohort_of_row = np.asarray(cohorts).astype(str)
    if cohort_of_row.shape != (n,):
        raise ValueError(f"cohorts must have shape ({n},), got {cohort_of_row.shape}")
    model_scores = {m: as_scores(s, n, f"scores[{m!r}]") for m, s in scores.items()}
    others = [m for m in model_scores if m not in (reference, ORACLE)]
    slices: List[Tuple[str, np.ndarray]] = [(OVERALL, np.ones(n, dtype=bool))]
    slices += [(c, cohort_of_row == str(c)) for c in cohort_names]
    per_slice = {}
    for name, mask in slices:
        per_slice[name] = _compare_slice(
            name, users[mask], y[mask], {m: s[mask] for m, s in model_scores.items()}, reference, others,
            int(n_resamples), seed, confidence, int(chunk_size))
    return {comparison_key(reference, o): {"overall": per_slice[OVERALL][o],
                                            "cohorts": {str(c): per_slice[c][o] for c in cohort_names}}
            for o in others}


# ---------------------------------------------------------------------------------------------
# baseline sanity checks


def baseline_checks(metrics_models: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Flags each DNN baseline whose overall AUC does not beat its linear counterpart.

    Pairs: ``global_dnn`` vs ``linear``, ``wide_deep_id`` vs ``linear_user_id``. A DNN that a
    logistic regression on the same features matches or beats is most likely under-trained, and
    a lift over it says little.

    Args:
        metrics_models: ``metrics.json``'s ``models`` mapping (model -> ``{"overall": {"auc":
            ...}, ...}``); pairs with a model absent are skipped.

    Returns:
        ``{dnn: {"counterpart": linear, "auc": AUC(dnn), "counterpart_auc": AUC(linear),
        "delta": AUC(dnn) - AUC(linear), "under_trained": delta <= 0}}``; ``delta`` None and
        ``under_trained`` False when either overall AUC is null.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for dnn, linear in BASELINE_COUNTERPARTS:
        if dnn not in metrics_models or linear not in metrics_models:
            continue
        auc = metrics_models[dnn]["overall"]["auc"]
        counterpart_auc = metrics_models[linear]["overall"]["auc"]
        delta = None if auc is None or counterpart_auc is None else float(auc) - float(counterpart_auc)
        out[dnn] = {"counterpart": linear,
                    "auc": None if auc is None else float(auc),
                    "counterpart_auc": None if counterpart_auc is None else float(counterpart_auc),
                    "delta": delta, "under_trained": bool(delta is not None and delta <= 0)}
    return out
