"""What the HTML report shows, derived from a ``metrics.json`` dict: no HTML, no plotting.

Model labels and colours, the slices in report order, per-slice stats, the relative lift of
LiMAML over a baseline (marginal intervals), the verdict of a paired comparison, the gap to the
oracle and the under-trained baseline warnings. :mod:`report.plots`, :mod:`report.html_tables`
and :mod:`report.html` draw them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from report import metrics_schema as ms
from report import paired as rp

LIMAML = "limaml"
MULTI_BLOCK = ms.MULTI_BLOCK
BASELINES: Tuple[str, ...] = ("global_dnn", "wide_deep_id", "linear", "linear_user_id")
ORACLE = "oracle"
MODEL_COLOURS = {"limaml": "#d62728", "limaml_multi": "#e377c2", "global_dnn": "#1f77b4",
                 "wide_deep_id": "#2ca02c", "linear": "#9467bd", "linear_user_id": "#ff7f0e",
                 "oracle": "#444444"}
MODEL_LABELS = {"limaml": "LiMAML", "limaml_multi": "LiMAML multi-block", "global_dnn": "global DNN",
                "wide_deep_id": "wide&deep + user ID", "linear": "linear",
                "linear_user_id": "linear + user ID", "oracle": "oracle"}
VERDICT_BETTER, VERDICT_WORSE, VERDICT_NS = "better", "worse", "n.s."
TABLE_COLUMNS: Tuple[str, ...] = ("model", "slice", "auc", "auc_ci95", "logloss", "examples", "users")


def slices(metrics: Mapping[str, Any]) -> List[str]:
    """``overall`` then the cohorts of ``metrics``, in report order."""
    first = next(iter(metrics["models"].values()))
    return [ms.OVERALL, *first["cohorts"]]


def stats(metrics: Mapping[str, Any], model: str, slice_name: str) -> Mapping[str, Any]:
    """The ``S`` entry of ``model`` on one slice (``overall`` or a cohort)."""
    m = metrics["models"][model]
    return m["overall"] if slice_name == ms.OVERALL else m["cohorts"][slice_name]


def models(metrics: Mapping[str, Any]) -> List[str]:
    """The models of ``metrics``, in report order (:data:`report.metrics_schema.MODEL_NAMES`)."""
    return [m for m in ms.MODEL_NAMES if m in metrics["models"]]


def slice_label(slice_name: str) -> str:
    """``overall`` or ``cohort <name>``."""
    return slice_name if slice_name == ms.OVERALL else f"cohort {slice_name}"


def fmt(value: Optional[float], digits: int = 4) -> str:
    """``value`` with ``digits`` decimals, ``—`` for null."""
    return "—" if value is None else f"{value:.{digits}f}"


def label(model: str) -> str:
    """The model's display name (its key when unknown)."""
    return MODEL_LABELS.get(model, model)


def colour(model: str) -> str:
    """The model's plot colour (grey when unknown)."""
    return MODEL_COLOURS.get(model, "#7f7f7f")


def make_slice_table_rows(metrics: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One row per model x slice (overall first, then the cohorts) of a ``metrics.json`` dict.

    Args:
        metrics: a dict that passes :func:`report.metrics.validate_metrics`.

    Returns:
        Rows ``{"model", "slice", "auc", "auc_ci95", "logloss", "examples", "users"}``.
    """
    rows = []
    for model in models(metrics):
        for slice_name in slices(metrics):
            s = stats(metrics, model, slice_name)
            rows.append({"model": model, "slice": slice_name, **{k: s[k] for k in ms.SLICE_STATS_KEYS}})
    return rows


def relative_lift(metrics: Mapping[str, Any], model: str, baseline: str,
                  slice_name: str) -> Optional[Dict[str, Any]]:
    """Relative AUC lift of ``model`` over ``baseline`` on one slice, in percent.

    Returns:
        ``{"lift_pct": float, "significant": bool}`` where ``significant`` means the two 95% CIs
        do not overlap (a conservative test: overlapping intervals do not prove equality); None
        when either AUC is missing. Without intervals, ``significant`` is False.
    """
    a, b = stats(metrics, model, slice_name), stats(metrics, baseline, slice_name)
    if a["auc"] is None or b["auc"] is None or b["auc"] == 0:
        return None
    significant = False
    if a["auc_ci95"] is not None and b["auc_ci95"] is not None:
        significant = a["auc_ci95"][0] > b["auc_ci95"][1] or a["auc_ci95"][1] < b["auc_ci95"][0]
    return {"lift_pct": 100.0 * (a["auc"] / b["auc"] - 1.0), "significant": bool(significant)}


def comparisons(metrics: Mapping[str, Any], reference: Optional[str] = None
                ) -> List[Tuple[str, str, str, Mapping[str, Any]]]:
    """``[(key, reference, other, comparison)]`` of ``metrics["comparisons"]``, in stored order.

    Args:
        metrics: a ``metrics.json`` dict.
        reference: only the comparisons of this reference model (``limaml``: LiMAML vs the
            baselines; ``limaml_multi``: the multi-block model vs LiMAML); None: all.
    """
    out = []
    for key, comparison in (metrics.get("comparisons") or {}).items():
        ref, _, other = key.partition("_vs_")
        if reference is None or ref == reference:
            out.append((key, ref, other, comparison))
    return out


def comparison_slice(comparison: Mapping[str, Any], slice_name: str) -> Mapping[str, Any]:
    """The ``C`` entry of a comparison ``P`` on one slice."""
    return comparison["overall"] if slice_name == ms.OVERALL else comparison["cohorts"][slice_name]


def paired_verdict(entry: Mapping[str, Any], reference_label: str = "LiMAML") -> Optional[str]:
    """Verdict of one paired comparison slice ``C`` (see :mod:`report.paired`).

    Returns:
        ``"<reference_label> better"`` when the whole interval is above 0, ``"<reference_label>
        worse"`` when it is below 0, ``"n.s."`` when it contains 0 (or there is a delta but no
        interval), None when the delta is null (one class only / no rows).
    """
    if entry["delta"] is None:
        return None
    ci = entry["ci95"]
    if ci is None:
        return VERDICT_NS
    if ci[0] > 0:
        return f"{reference_label} {VERDICT_BETTER}"
    if ci[1] < 0:
        return f"{reference_label} {VERDICT_WORSE}"
    return VERDICT_NS


def baseline_checks(metrics: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    """``metrics``' ``baseline_checks`` (computed from ``models`` when absent: older files)."""
    checks = metrics.get("baseline_checks")
    return rp.baseline_checks(metrics["models"]) if checks is None else checks


def under_trained_warnings(metrics: Mapping[str, Any]) -> List[str]:
    """One sentence per baseline flagged ``under_trained`` in ``metrics``' ``baseline_checks``.

    E.g. ``"global_dnn does not beat its linear counterpart linear: 0.701 vs 0.704 AUC; treat it
    as under-trained"``. Computed from ``models`` when the key is absent (older metrics.json).
    A baseline that scores exactly its counterpart's AUC is said to be that model: its training
    keeps the deep part only for a significant validation gain over its linear warm start
    (``TrainConfig.baseline_significant_gain``) and otherwise falls back to it.
    """
    out = []
    for model, check in baseline_checks(metrics).items():
        if not check["under_trained"]:
            continue
        if abs(check["delta"]) < 1e-9:
            out.append(f"{model} is its linear counterpart {check['counterpart']} "
                       f"({check['auc']:.3f} AUC): its deep part did not beat the linear model "
                       "significantly on held-out users, so training fell back to it")
        else:
            out.append(f"{model} does not beat its linear counterpart {check['counterpart']}: "
                       f"{check['auc']:.3f} vs {check['counterpart_auc']:.3f} AUC; treat it as under-trained")
    return out


def oracle_gap(metrics: Mapping[str, Any], model: str, slice_name: str) -> Optional[float]:
    """Oracle AUC minus ``model``'s AUC on one slice (None without an oracle or an AUC)."""
    if ORACLE not in metrics["models"]:
        return None
    a, o = stats(metrics, model, slice_name)["auc"], stats(metrics, ORACLE, slice_name)["auc"]
    return None if a is None or o is None else o - a
