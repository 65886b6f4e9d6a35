"""The self-contained HTML evaluation report (``index.html`` + ``metrics.json``).

Plots are drawn with matplotlib and embedded as base64 PNG; styles are inline; the page loads
nothing from anywhere, so it can be opened from an artifact store or attached to a review.

Elements (ids): summary (``summary``), under-trained baseline warning (``baseline-warning``, only
when a baseline is flagged), AUC by cohort (``plot-auc``), paired lift chart and table
(``plot-paired-lift``, ``paired-table``, only with ``comparisons``), relative lift
(``plot-lift``, ``lift-table``), gap to oracle (``plot-oracle-gap``, only with an oracle),
calibration (``plot-calibration``), TFMA slice metrics (``slice-table``).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from report import metrics as rm
from report import paired as rp

LIMAML = "limaml"
BASELINES: Tuple[str, ...] = ("global_dnn", "wide_deep_id", "linear", "linear_user_id")
ORACLE = "oracle"
MODEL_COLOURS = {"limaml": "#d62728", "global_dnn": "#1f77b4", "wide_deep_id": "#2ca02c",
                 "linear": "#9467bd", "linear_user_id": "#ff7f0e", "oracle": "#444444"}
MODEL_LABELS = {"limaml": "LiMAML", "global_dnn": "global DNN", "wide_deep_id": "wide&deep + user ID",
                "linear": "linear", "linear_user_id": "linear + user ID", "oracle": "oracle"}
VERDICT_BETTER, VERDICT_WORSE, VERDICT_NS = "better", "worse", "n.s."
TABLE_COLUMNS: Tuple[str, ...] = ("model", "slice", "auc", "auc_ci95", "logloss", "examples", "users")


def _slices(metrics: Mapping[str, Any]) -> List[str]:
    first = next(iter(metrics["models"].values()))
    return [rm.OVERALL, *first["cohorts"]]


def _stats(metrics: Mapping[str, Any], model: str, slice_name: str) -> Mapping[str, Any]:
    m = metrics["models"][model]
    return m["overall"] if slice_name == rm.OVERALL else m["cohorts"][slice_name]


def _models(metrics: Mapping[str, Any]) -> List[str]:
    return [m for m in rm.MODEL_NAMES if m in metrics["models"]]


def make_slice_table_rows(metrics: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One row per model x slice (overall first, then the cohorts) of a ``metrics.json`` dict.

    Args:
        metrics: a dict that passes :func:`report.metrics.validate_metrics`.

    Returns:
        Rows ``{"model", "slice", "auc", "auc_ci95", "logloss", "examples", "users"}``.
    """
    rows = []
    for model in _models(metrics):
        for slice_name in _slices(metrics):
            s = _stats(metrics, model, slice_name)
            rows.append({"model": model, "slice": slice_name, **{k: s[k] for k in rm.SLICE_STATS_KEYS}})
    return rows


def relative_lift(metrics: Mapping[str, Any], model: str, baseline: str,
                  slice_name: str) -> Optional[Dict[str, Any]]:
    """Relative AUC lift of ``model`` over ``baseline`` on one slice, in percent.

    Returns:
        ``{"lift_pct": float, "significant": bool}`` where ``significant`` means the two 95% CIs
        do not overlap (a conservative test: overlapping intervals do not prove equality); None
        when either AUC is missing. Without intervals, ``significant`` is False.
    """
    a, b = _stats(metrics, model, slice_name), _stats(metrics, baseline, slice_name)
    if a["auc"] is None or b["auc"] is None or b["auc"] == 0:
        return None
    significant = False
    if a["auc_ci95"] is not None and b["auc_ci95"] is not None:
        significant = a["auc_ci95"][0] > b["auc_ci95"][1] or a["auc_ci95"][1] < b["auc_ci95"][0]
    return {"lift_pct": 100.0 * (a["auc"] / b["auc"] - 1.0), "significant": bool(significant)}


def _figure(figsize: Tuple[float, float], ncols: int = 0) -> Tuple[Any, Any]:
    """A pyplot-free matplotlib figure (no global backend or state touched) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols, squeeze=False) if ncols else fig.subplots()
    return fig, axes


def _figure_to_img(fig: Any, element_id: str, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img id="{html.escape(element_id)}" class="plot" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{data}">')


def _plot_auc(metrics: Mapping[str, Any]) -> str:
    models, slices = _models(metrics), _slices(metrics)
    fig, ax = _figure((11, 4.2))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        xs, ys, lo_err, hi_err = [], [], [], []
        for j, slice_name in enumerate(slices):
            s = _stats(metrics, model, slice_name)
            if s["auc"] is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(s["auc"])
            lo, hi = s["auc_ci95"] if s["auc_ci95"] is not None else (s["auc"], s["auc"])
            lo_err.append(max(s["auc"] - lo, 0.0))
            hi_err.append(max(hi - s["auc"], 0.0))
        ax.errorbar(xs, ys, yerr=[lo_err, hi_err], fmt="o" if model != ORACLE else "D", capsize=3,
                    color=MODEL_COLOURS[model], label=MODEL_LABELS[model], markersize=6)
    for j, slice_name in enumerate(slices):
        if all(_stats(metrics, m, slice_name)["auc"] is None for m in models):
            empty = all(_stats(metrics, m, slice_name)["examples"] == 0 for m in models)
            ax.text(j, 0.5, "no AUC\n" + ("(no examples)" if empty else "(one class only)"), ha="center",
                    va="center", color="#888888", fontsize=9, transform=ax.get_xaxis_transform())
    ax.axhline(0.5, color="#bbbbbb", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(slices)))
    ax.set_xticklabels([_slice_label(s) for s in slices])
    ax.set_xlim(-0.6, len(slices) - 0.4)
    ax.set_xlabel("slice (activity cohort = history size)")
    ax.set_ylabel("AUC (95% CI)")
    ax.set_title("AUC by cohort")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(models), fontsize=9, frameon=False)
    return _figure_to_img(fig, "plot-auc", "AUC by cohort per model with 95% confidence intervals")


def _slice_label(slice_name: str) -> str:
    return slice_name if slice_name == rm.OVERALL else f"cohort {slice_name}"


def _cohort_axis(ax: Any, slices: Sequence[str], ylabel: str, title: str, margin: float,
                 zero_width: float) -> None:
    """Shared styling of the per-cohort difference plots: a zero line, cohort ticks, grid."""
    ax.axhline(0, color="#333333", linewidth=zero_width)
    ax.set_xticks(range(len(slices)))
    ax.set_xticklabels([_slice_label(s) for s in slices])
    ax.set_xlim(-0.6, len(slices) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=margin)
    ax.grid(axis="y", alpha=0.3)


def _plot_lift(metrics: Mapping[str, Any]) -> str:
    slices = _slices(metrics)
    baselines = [b for b in BASELINES if b in metrics["models"]]
    fig, ax = _figure((11, 4.2))
    width = 0.8 / max(len(baselines), 1)
    for i, baseline in enumerate(baselines):
        for j, slice_name in enumerate(slices):
            lift = relative_lift(metrics, LIMAML, baseline, slice_name)
            x = j - 0.4 + width * (i + 0.5)
            if lift is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", color="#888888", fontsize=8)
                continue
            colour = MODEL_COLOURS[baseline]
            ax.bar(x, lift["lift_pct"], width=width * 0.9, color=colour if lift["significant"] else "white",
                   edgecolor=colour, hatch=None if lift["significant"] else "//", linewidth=1.2)
            label = f"{lift['lift_pct']:+.1f}%" + ("" if lift["significant"] else "\nn.s.")
            up = lift["lift_pct"] >= 0
            ax.annotate(label, (x, lift["lift_pct"]), xytext=(0, 3 if up else -3), textcoords="offset points",
                        ha="center", va="bottom" if up else "top", fontsize=8)
    for baseline in baselines:  # legend entries
        ax.bar([math.nan], [math.nan], color=MODEL_COLOURS[baseline], label=f"vs {MODEL_LABELS[baseline]}")
    ax.bar([math.nan], [math.nan], color="white", edgecolor="#555555", hatch="//",
           label="n.s.: 95% CIs overlap")
    _cohort_axis(ax, slices, "relative AUC lift of LiMAML (%)",
                 "LiMAML's relative AUC lift over each baseline", margin=0.2, zero_width=0.8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(baselines) + 1, fontsize=9, frameon=False)
    return _figure_to_img(fig, "plot-lift", "Relative AUC lift of LiMAML over each baseline by cohort")


def _comparisons(metrics: Mapping[str, Any]) -> List[Tuple[str, str, str, Mapping[str, Any]]]:
    """``[(key, reference, other, comparison)]`` of ``metrics["comparisons"]``, in stored order."""
    out = []
    for key, comparison in (metrics.get("comparisons") or {}).items():
        reference, _, other = key.partition("_vs_")
        out.append((key, reference, other, comparison))
    return out


def _comparison_slice(comparison: Mapping[str, Any], slice_name: str) -> Mapping[str, Any]:
    return comparison["overall"] if slice_name == rm.OVERALL else comparison["cohorts"][slice_name]


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


def _label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _colour(model: str) -> str:
    return MODEL_COLOURS.get(model, "#7f7f7f")


def _plot_paired(metrics: Mapping[str, Any]) -> str:
    slices = _slices(metrics)
    comparisons = _comparisons(metrics)
    fig, ax = _figure((11, 4.2))
    width = 0.8 / max(len(comparisons), 1)
    for i, (_, reference, other, comparison) in enumerate(comparisons):
        colour = _colour(other)
        for j, slice_name in enumerate(slices):
            entry = _comparison_slice(comparison, slice_name)
            x = j - 0.4 + width * (i + 0.5)
            if entry["delta"] is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", color="#888888", fontsize=8)
                continue
            delta = entry["delta"]
            lo, hi = entry["ci95"] if entry["ci95"] is not None else (delta, delta)
            significant = paired_verdict(entry) not in (None, VERDICT_NS)
            ax.errorbar([x], [delta], yerr=[[max(delta - lo, 0.0)], [max(hi - delta, 0.0)]], fmt="o",
                        capsize=3, color=colour, markerfacecolor=colour if significant else "white",
                        markersize=6)
        ax.errorbar([math.nan], [math.nan], yerr=[[0], [0]], fmt="o", capsize=3, color=colour,
                    label=f"{_label(reference)} − {_label(other)}")
    ax.errorbar([math.nan], [math.nan], fmt="o", color="#555555", markerfacecolor="white",
                label="hollow: interval contains 0 (n.s.)")
    _cohort_axis(ax, slices, "ΔAUC (95% paired bootstrap CI)",
                 "Paired lift: LiMAML's AUC minus each model's, on the same rows", margin=0.15,
                 zero_width=0.9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(comparisons) + 1, 4), fontsize=9,
              frameon=False)
    return _figure_to_img(fig, "plot-paired-lift",
                          "AUC difference between LiMAML and each model by cohort with 95% paired bootstrap intervals")


def _paired_table(metrics: Mapping[str, Any]) -> str:
    head = ["comparison", "slice", "ΔAUC", "95% CI", "p", "users", "examples", "resamples", "verdict"]
    out = ['<table id="paired-table">', "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>",
           "<tbody>"]
    for key, reference, other, comparison in _comparisons(metrics):
        for slice_name in _slices(metrics):
            entry = _comparison_slice(comparison, slice_name)
            ci = entry["ci95"]
            verdict = paired_verdict(entry, _label(reference))
            if verdict is None:
                verdict_cell = '<span class="ns">— (AUC undefined)</span>'
            else:
                cls = "ns" if verdict == VERDICT_NS else ("significant" if verdict.endswith(VERDICT_BETTER)
                                                          else "worse")
                verdict_cell = f'<span class="{cls}">{html.escape(verdict)}</span>'
            delta = "—" if entry["delta"] is None else f"{entry['delta']:+.4f}"
            cells = [f"{html.escape(_label(reference))} vs {html.escape(_label(other))} "
                     f"<code>{html.escape(key)}</code>",
                     html.escape(_slice_label(slice_name)), delta,
                     "—" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]",
                     _fmt(entry["p_value"], 3), f"{entry['users']:,}", f"{entry['examples']:,}",
                     f"{entry['resamples']:,}", verdict_cell]
            out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _baseline_checks(metrics: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    checks = metrics.get("baseline_checks")
    return rp.baseline_checks(metrics["models"]) if checks is None else checks


def under_trained_warnings(metrics: Mapping[str, Any]) -> List[str]:
    """One sentence per baseline flagged ``under_trained`` in ``metrics``' ``baseline_checks``.

    E.g. ``"global_dnn does not beat its linear counterpart linear: 0.701 vs 0.704 AUC; treat it
    as under-trained"``. Computed from ``models`` when the key is absent (older metrics.json).
    """
    out = []
    for model, check in _baseline_checks(metrics).items():
        if check["under_trained"]:
            out.append(f"{model} does not beat its linear counterpart {check['counterpart']}: "
                       f"{check['auc']:.3f} vs {check['counterpart_auc']:.3f} AUC; treat it as under-trained")
    return out


def _warning_block(metrics: Mapping[str, Any]) -> str:
    warnings = under_trained_warnings(metrics)
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return ('<div class="warning" id="baseline-warning"><b>Warning: under-trained baseline.</b> '
            "A lift over such a baseline says little about LiMAML."
            f"<ul>{items}</ul></div>")


def _plot_calibration(calibration: Mapping[str, Sequence[Mapping[str, float]]], models: Sequence[str]) -> str:
    shown = [m for m in models if m in calibration]
    fig, axes = _figure((2.9 * max(len(shown), 1), 3.3), ncols=max(len(shown), 1))
    for ax, model in zip(axes[0], shown):
        buckets = calibration[model]
        ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfect")
        if buckets:
            total = sum(b["examples"] for b in buckets)
            xs = [b["mean_prediction"] for b in buckets]
            ys = [b["observed_rate"] for b in buckets]
            sizes = [20 + 400 * b["examples"] / total for b in buckets]
            ax.plot(xs, ys, color=MODEL_COLOURS[model], linewidth=1)
            ax.scatter(xs, ys, s=sizes, color=MODEL_COLOURS[model], alpha=0.8, zorder=3)
        else:
            ax.text(0.5, 0.5, "no calibration plot", ha="center", va="center", color="#888888")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_title(MODEL_LABELS[model], fontsize=10)
        ax.set_xlabel("mean predicted", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("observed click rate", fontsize=9)
    fig.suptitle("Calibration (overall; marker area ∝ examples in the bucket)", fontsize=11)
    fig.tight_layout()
    return _figure_to_img(fig, "plot-calibration", "Calibration: observed rate vs mean prediction per bucket")


def _plot_oracle_gap(metrics: Mapping[str, Any]) -> str:
    slices = _slices(metrics)
    models = [m for m in _models(metrics) if m != ORACLE]
    fig, ax = _figure((11, 3.8))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        xs, gaps = [], []
        for j, slice_name in enumerate(slices):
            gap = oracle_gap(metrics, model, slice_name)
            if gap is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                gaps.append(gap)
        ax.bar(xs, gaps, width=width * 0.9, color=MODEL_COLOURS[model], label=MODEL_LABELS[model],
               alpha=1.0 if model == LIMAML else 0.55)
    ax.axhline(0, color="#333333", linewidth=0.8)
    ax.set_xticks(range(len(slices)))
    ax.set_xticklabels([_slice_label(s) for s in slices])
    ax.set_xlim(-0.6, len(slices) - 0.4)
    ax.set_ylabel("oracle AUC − model AUC")
    ax.set_title("Gap to the oracle (best possible AUC on these examples); lower is better")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(models), fontsize=9, frameon=False)
    return _figure_to_img(fig, "plot-oracle-gap", "AUC gap of each model to the oracle by cohort")


def oracle_gap(metrics: Mapping[str, Any], model: str, slice_name: str) -> Optional[float]:
    """Oracle AUC minus ``model``'s AUC on one slice (None without an oracle or an AUC)."""
    if ORACLE not in metrics["models"]:
        return None
    a, o = _stats(metrics, model, slice_name)["auc"], _stats(metrics, ORACLE, slice_name)["auc"]
    return None if a is None or o is None else o - a


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _table(rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any]) -> str:
    with_oracle = ORACLE in metrics["models"]
    head = ["model", "slice", "AUC [95% CI]", "log loss", "examples", "users"]
    if with_oracle:
        head.append("gap to oracle")
    out = ['<table id="slice-table">', "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>",
           "<tbody>"]
    for row in rows:
        missing = [k for k in TABLE_COLUMNS if k not in row]
        if missing:
            raise ValueError(f"slice table row {row!r} lacks {missing}")
        ci = row["auc_ci95"]
        auc = _fmt(row["auc"]) + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci is not None else "")
        cells = [MODEL_LABELS.get(row["model"], row["model"]) + f" <code>{html.escape(row['model'])}</code>",
                 html.escape(_slice_label(row["slice"])), auc, _fmt(row["logloss"]),
                 f"{row['examples']:,}", f"{row['users']:,}"]
        if with_oracle:
            gap = None if row["model"] == ORACLE else oracle_gap(metrics, row["model"], row["slice"])
            cells.append(_fmt(gap))
        cls = ' class="limaml"' if row["model"] == LIMAML else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _lift_table(metrics: Mapping[str, Any]) -> str:
    baselines = [b for b in BASELINES if b in metrics["models"]]
    head = "".join(f"<th>vs {html.escape(MODEL_LABELS[b])}</th>" for b in baselines)
    out = ['<table id="lift-table">', f"<thead><tr><th>slice</th>{head}</tr></thead>", "<tbody>"]
    for slice_name in _slices(metrics):
        cells = []
        for b in baselines:
            lift = relative_lift(metrics, LIMAML, b, slice_name)
            if lift is None:
                cells.append("—")
            else:
                tag, cls = ("significant", "significant") if lift["significant"] else ("n.s.", "ns")
                cells.append(f'{lift["lift_pct"]:+.2f}% <span class="{cls}">({tag})</span>')
        out.append(f"<tr><td>{html.escape(_slice_label(slice_name))}</td>"
                   + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_STYLE = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #555; }
.summary { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 10px 14px; border-radius: 4px; }
img.plot { max-width: 100%; display: block; margin: 8px 0; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; }
td:first-child, td:nth-child(2), th:first-child, th:nth-child(2) { text-align: left; }
tr.limaml td { background: #fff4f4; }
code { color: #666; font-size: 0.85em; }
.ns { color: #888; }
.significant { color: #1a7f37; }
.notes li { color: #555; font-size: 0.9em; }
.worse { color: #b31d28; }
.warning { background: #fff5e6; border: 2px solid #e36209; padding: 8px 14px; border-radius: 4px;
           margin: 12px 0; }
.warning ul { margin: 4px 0; }
"""


def _summary(metrics: Mapping[str, Any]) -> str:
    parts = []
    overall = {m: metrics["models"][m]["overall"] for m in _models(metrics)}
    aucs = ", ".join(f"{html.escape(MODEL_LABELS[m])} {_fmt(s['auc'])}" for m, s in overall.items())
    parts.append(f"Overall AUC: {aucs}.")
    comparisons = _comparisons(metrics)
    for _, reference, other, comparison in comparisons:
        entry = comparison["overall"]
        verdict = paired_verdict(entry, _label(reference))
        if verdict is None:
            continue
        ci = entry["ci95"]
        interval = "" if ci is None else f" [{ci[0]:+.4f}, {ci[1]:+.4f}]"
        parts.append(f"ΔAUC {html.escape(_label(reference))} − {html.escape(_label(other))}: "
                     f"{entry['delta']:+.4f}{interval} ({html.escape(verdict)}, paired).")
    for b in ([] if comparisons else BASELINES):
        lift = relative_lift(metrics, LIMAML, b, rm.OVERALL) if b in metrics["models"] else None
        if lift is not None:
            tag = "significant" if lift["significant"] else "not significant: 95% CIs overlap"
            parts.append(f"LiMAML vs {html.escape(MODEL_LABELS[b])}: {lift['lift_pct']:+.2f}% AUC ({tag}).")
    for warning in under_trained_warnings(metrics):
        parts.append(html.escape(warning) + ".")
    gap = oracle_gap(metrics, LIMAML, rm.OVERALL)
    if gap is not None:
        parts.append(f"LiMAML's gap to oracle: {gap:.4f} AUC.")
    n = overall[LIMAML] if LIMAML in overall else next(iter(overall.values()))
    parts.append(f"{n['examples']:,} evaluation examples from {n['users']:,} users.")
    return " ".join(parts)


def render_report(metrics: Mapping[str, Any], calibration: Mapping[str, Sequence[Mapping[str, float]]],
                  slice_table_rows: Optional[Sequence[Mapping[str, Any]]], out_dir: str,
                  notes: Sequence[str] = (), title: str = "LiMAML evaluation report") -> str:
    """Writes ``index.html`` and ``metrics.json`` into ``out_dir``.

    Args:
        metrics: the ``metrics.json`` dict (validated first). Its ``comparisons`` (when present)
            become the paired lift chart and table; its ``baseline_checks`` (computed from the
            models when absent) the under-trained warning block.
        calibration: ``report.metrics.read_calibration`` output (model -> buckets).
        slice_table_rows: rows of the slice table (see :func:`make_slice_table_rows`); None: made
            from ``metrics``.
        out_dir: output folder (created).
        notes: extra sentences for the notes list (e.g. how TFMA computed the intervals).
        title: the page title.

    Returns:
        The path of ``index.html``.

    Raises:
        report.metrics.MetricsShapeError: ``metrics`` is not a ``metrics.json`` dict.
        ValueError: a slice table row lacks a column.
    """
    try:
        cohorts = list(next(iter(metrics["models"].values()))["cohorts"])
    except (TypeError, KeyError, AttributeError, StopIteration):
        cohorts = list(rm.DEFAULT_COHORTS)  # validate_metrics names what is wrong
    rm.validate_metrics(metrics, cohorts=cohorts)
    if LIMAML not in metrics["models"]:
        raise ValueError("metrics has no 'limaml' model")
    rows = make_slice_table_rows(metrics) if slice_table_rows is None else list(slice_table_rows)
    os.makedirs(out_dir, exist_ok=True)
    models = _models(metrics)
    sections = [
        "<h2>AUC by cohort</h2>",
        _plot_auc(metrics),
    ]
    if _comparisons(metrics):
        sections += [
            "<h2>Paired lift of LiMAML</h2>",
            _plot_paired(metrics),
            _paired_table(metrics),
            "<p class=\"meta\">ΔAUC = AUC(LiMAML) − AUC(model) on the same query rows. 95% CI: percentile "
            "interval of a paired cluster bootstrap over users (each resample draws the slice's users with "
            "replacement, every drawn user brings all its rows, both models are scored on the same resample). "
            "p: two-sided bootstrap p-value. Verdict: better / worse when the interval excludes 0, "
            "n.s. when it contains 0.</p>",
        ]
    sections += [
        "<h2>Relative AUC lift of LiMAML</h2>",
        _plot_lift(metrics),
        _lift_table(metrics),
        "<p class=\"meta\">Lift = AUC(LiMAML) / AUC(baseline) − 1. n.s. = not significant: the two 95% "
        "confidence intervals overlap (a conservative check on marginal intervals"
        + ("; the paired intervals above are the test of a difference" if _comparisons(metrics) else "")
        + ").</p>",
    ]
    if ORACLE in metrics["models"]:
        sections += ["<h2>LiMAML's gap to oracle</h2>",
                     "<p>The oracle scores each example with its true click probability (synthetic data), "
                     "so its AUC is the best any model can reach on these examples.</p>",
                     _plot_oracle_gap(metrics)]
    sections += ["<h2>Calibration</h2>", _plot_calibration(calibration, models),
                 "<h2>TFMA slice metrics</h2>", _table(rows, metrics)]
    default_notes = [
        "AUC: TFMA's thresholded AUC; log loss: mean binary cross-entropy (natural log, TFMA custom "
        "metric report.tfma_metrics.LogLoss).",
        "A cohort without evaluation examples shows — (null in metrics.json) for AUC and log loss; "
        "a cohort whose labels are all 0 or all 1 shows — for AUC (undefined there).",
    ]
    if _comparisons(metrics):
        default_notes.append("Paired ΔAUC: exact rank AUC (ties count 1/2) of the predictions on the evaluation "
                             "rows, so it can differ by ~1e-3 from the difference of TFMA's thresholded AUCs.")
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in [*notes, *default_notes])
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">dataset <b>{html.escape(metrics['dataset'])}</b> · protocol <b>{html.escape(metrics['protocol'])}</b>
 · models {", ".join(f"<code>{html.escape(m)}</code>" for m in models)}</p>
<p class="summary" id="summary">{_summary(metrics)}</p>
{_warning_block(metrics)}
{"".join(s + chr(10) for s in sections)}
<h2>Notes</h2>
<ul class="notes">{note_items}</ul>
</body>
</html>
"""
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2, allow_nan=False)
    return path
