"""The ``metrics.json`` shape, its constants, and :func:`validate_metrics`.

Shape (checked by :func:`validate_metrics`)::

    {"dataset": str, "protocol": str,
     "models": {"limaml": M[, "limaml_multi": M], "global_dnn": M, "wide_deep_id": M
                [, "linear": M][, "linear_user_id": M][, "oracle": M]},
     "baseline_checks": {"global_dnn": B, "wide_deep_id": B},      # pairs whose models are present
     ["comparisons": {"limaml_vs_<other>": P, ...                  # when the caller passes them
                      [, "limaml_multi_vs_limaml": P]}]}           # when limaml_multi is scored
    M = {"overall": S, "cohorts": {"0": S, "1-4": S, "5-19": S, "20-99": S, "100+": S}}
    S = {"auc": float|null, "auc_ci95": [float, float]|null, "logloss": float|null,
         "examples": int, "users": int}
    B = {"counterpart": "linear"|"linear_user_id", "auc": float|null, "counterpart_auc": float|null,
         "delta": float|null, "under_trained": bool}
    P = {"overall": C, "cohorts": {"0": C, ...}}
    C = {"delta": float|null, "ci95": [lo, hi]|null, "p_value": float|null,
         "users": int, "examples": int, "resamples": int}

``linear`` (logistic regression on the global DNN's features) and ``linear_user_id`` (the same
plus the hashed user id) are the linear reference models; ``baseline_checks`` (computed by
:func:`report.paired.baseline_checks` from the overall AUCs) flags ``global_dnn`` /
``wide_deep_id`` as ``under_trained`` when it does not beat its linear counterpart.
``comparisons`` holds :func:`report.paired.paired_bootstrap`'s output: AUC(limaml) - AUC(other)
on the same rows with a paired cluster-bootstrap interval over users (``delta``, ``ci95`` and
``p_value`` null where the slice has one class only). ``limaml_multi`` is LiMAML with a second
meta block per user × primary genre (:mod:`trainer.genre_block`); its comparison is the other
way round, ``limaml_multi_vs_limaml`` = AUC(limaml_multi) - AUC(limaml). Older ``metrics.json``
files without the two keys still validate.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence, Tuple

from limaml.config import DEFAULT_COHORT_EDGES
from limaml.data.protocols import cohort_names
from report import paired as rp

DEFAULT_COHORTS: Tuple[str, ...] = tuple(cohort_names(DEFAULT_COHORT_EDGES))
# LiMAML with the user × genre meta block beside the user block (trainer.genre_block)
MULTI_BLOCK = "limaml_multi"
REQUIRED_MODELS: Tuple[str, ...] = ("limaml", "global_dnn", "wide_deep_id")
# report order
MODEL_NAMES: Tuple[str, ...] = ("limaml", MULTI_BLOCK, "global_dnn", "wide_deep_id", "linear",
                                "linear_user_id", "oracle")
OPTIONAL_MODELS: Tuple[str, ...] = tuple(m for m in MODEL_NAMES if m not in REQUIRED_MODELS)
OVERALL = "overall"
SLICE_STATS_KEYS: Tuple[str, ...] = ("auc", "auc_ci95", "logloss", "examples", "users")


class MetricsShapeError(ValueError):
    """A metrics dict does not have the ``metrics.json`` shape; the message names the path."""


def _fail(path: str, message: str) -> None:
    raise MetricsShapeError(f"metrics.{path}: {message}" if path else f"metrics: {message}")


def _check_float(value: Any, path: str, lo: float = -math.inf, hi: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, float):
        _fail(path, f"expected a float, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        _fail(path, f"expected a finite float in [{lo}, {hi}], got {value!r}")


def _check_int(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"expected an int, got {type(value).__name__} {value!r}")
    if value < 0:
        _fail(path, f"expected a non-negative int, got {value!r}")


def _check_keys(d: Any, expected: Iterable[str], path: str, optional: Iterable[str] = ()) -> None:
    if not isinstance(d, dict):
        _fail(path, f"expected an object, got {type(d).__name__} {d!r}")
    expected, optional = list(expected), set(optional)
    for key in expected:
        if key not in d:
            _fail(f"{path}.{key}" if path else key, "missing")
    for key in d:
        if key not in expected and key not in optional:
            _fail(f"{path}.{key}" if path else str(key), f"unexpected key (expected {expected + sorted(optional)})")


def _check_stats(s: Any, path: str) -> None:
    _check_keys(s, SLICE_STATS_KEYS, path)
    _check_int(s["examples"], f"{path}.examples")
    _check_int(s["users"], f"{path}.users")
    if s["auc"] is not None:
        _check_float(s["auc"], f"{path}.auc", 0.0, 1.0)
    if s["logloss"] is not None:
        _check_float(s["logloss"], f"{path}.logloss", 0.0)
    ci = s["auc_ci95"]
    if ci is not None:
        _check_interval(ci, f"{path}.auc_ci95", -math.inf, math.inf)
        if s["auc"] is None:
            _fail(f"{path}.auc_ci95", "an interval without an auc")
    if s["examples"] == 0:
        for key in ("auc", "auc_ci95", "logloss"):
            if s[key] is not None:
                _fail(f"{path}.{key}", f"must be null for a slice without examples, got {s[key]!r}")


def _check_interval(ci: Any, path: str, lo: float, hi: float) -> None:
    if not isinstance(ci, list) or len(ci) != 2:
        _fail(path, f"expected [lower, upper] or null, got {ci!r}")
    _check_float(ci[0], f"{path}[0]", lo, hi)
    _check_float(ci[1], f"{path}[1]", lo, hi)
    if ci[0] > ci[1]:
        _fail(path, f"lower bound above upper bound: {ci!r}")


def _check_comparison(c: Any, path: str) -> None:
    _check_keys(c, rp.COMPARISON_KEYS, path)
    for key in ("users", "examples", "resamples"):
        _check_int(c[key], f"{path}.{key}")
    if c["delta"] is None:
        for key in ("ci95", "p_value"):
            if c[key] is not None:
                _fail(f"{path}.{key}", f"must be null when delta is null, got {c[key]!r}")
        return
    _check_float(c["delta"], f"{path}.delta", -1.0, 1.0)
    if c["ci95"] is not None:
        _check_interval(c["ci95"], f"{path}.ci95", -1.0, 1.0)
    if c["p_value"] is not None:
        _check_float(c["p_value"], f"{path}.p_value", 0.0, 1.0)
    if c["examples"] == 0:
        _fail(f"{path}.delta", f"must be null for a slice without examples, got {c['delta']!r}")


def _check_comparisons(comparisons: Any, cohorts: Sequence[str]) -> None:
    if not isinstance(comparisons, dict):
        _fail("comparisons", f"expected an object, got {type(comparisons).__name__} {comparisons!r}")
    for key, p in comparisons.items():
        path = f"comparisons.{key}"
        reference, sep, other = str(key).partition("_vs_")
        if not sep or reference not in MODEL_NAMES or other not in MODEL_NAMES or reference == other:
            _fail(path, f"expected a key '<model>_vs_<other model>' with models from {list(MODEL_NAMES)}")
        _check_keys(p, ("overall", "cohorts"), path)
        _check_comparison(p["overall"], f"{path}.overall")
        _check_keys(p["cohorts"], list(cohorts), f"{path}.cohorts")
        for cohort in cohorts:
            _check_comparison(p["cohorts"][cohort], f"{path}.cohorts.{cohort}")


def _check_baseline_checks(checks: Any) -> None:
    counterparts = dict(rp.BASELINE_COUNTERPARTS)
    if not isinstance(checks, dict):
        _fail("baseline_checks", f"expected an object, got {type(checks).__name__} {checks!r}")
    for model, b in checks.items():
        path = f"baseline_checks.{model}"
        if model not in counterparts:
            _fail(path, f"unexpected key (expected some of {list(counterparts)})")
        _check_keys(b, rp.BASELINE_CHECK_KEYS, path)
        if b["counterpart"] != counterparts[model]:
            _fail(f"{path}.counterpart", f"expected {counterparts[model]!r}, got {b['counterpart']!r}")
        for key in ("auc", "counterpart_auc"):
            if b[key] is not None:
                _check_float(b[key], f"{path}.{key}", 0.0, 1.0)
        if not isinstance(b["under_trained"], bool):
            _fail(f"{path}.under_trained", f"expected a bool, got {b['under_trained']!r}")
        if b["auc"] is None or b["counterpart_auc"] is None:
            if b["delta"] is not None:
                _fail(f"{path}.delta", "must be null when an AUC is null")
            if b["under_trained"]:
                _fail(f"{path}.under_trained", "must be false when an AUC is null")
            continue
        _check_float(b["delta"], f"{path}.delta", -1.0, 1.0)
        if abs(b["delta"] - (b["auc"] - b["counterpart_auc"])) > 1e-9:
            _fail(f"{path}.delta", f"expected auc - counterpart_auc, got {b['delta']!r}")
        if b["under_trained"] != (b["delta"] <= 0):
            _fail(f"{path}.under_trained", f"must be delta <= 0 ({b['delta']!r}), got {b['under_trained']!r}")


def validate_metrics(d: Any, cohorts: Sequence[str] = DEFAULT_COHORTS) -> None:
    """Checks that ``d`` has exactly the ``metrics.json`` shape (see the module docstring).

    Args:
        d: the dict to check (e.g. ``json.load`` of a ``metrics.json``).
        cohorts: the cohort names every model must have, no more, no fewer.

    Raises:
        MetricsShapeError: naming the path of the first mismatch, e.g.
            ``metrics.models.limaml.cohorts.1-4.auc: expected a float, got str '0.7'``.
    """
    _check_keys(d, ("dataset", "protocol", "models"), "", optional=("baseline_checks", "comparisons"))
    for key in ("dataset", "protocol"):
        if not isinstance(d[key], str) or not d[key]:
            _fail(key, f"expected a non-empty string, got {d[key]!r}")
    _check_keys(d["models"], REQUIRED_MODELS, "models", optional=OPTIONAL_MODELS)
    for model, m in d["models"].items():
        path = f"models.{model}"
        _check_keys(m, ("overall", "cohorts"), path)
        _check_stats(m["overall"], f"{path}.overall")
        _check_keys(m["cohorts"], list(cohorts), f"{path}.cohorts")
        for cohort in cohorts:
            _check_stats(m["cohorts"][cohort], f"{path}.cohorts.{cohort}")
    if "baseline_checks" in d:
        _check_baseline_checks(d["baseline_checks"])
        for model, b in d["baseline_checks"].items():
            for name, key in ((model, "auc"), (b["counterpart"], "counterpart_auc")):
                if name in d["models"] and b[key] != d["models"][name]["overall"]["auc"]:
                    _fail(f"baseline_checks.{model}.{key}",
                          f"{b[key]!r} differs from models.{name}.overall.auc")
    if "comparisons" in d:
        _check_comparisons(d["comparisons"], cohorts)
