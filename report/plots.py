"""The report's plots: matplotlib figures (pyplot-free) embedded as base64 PNG ``<img>`` tags.

AUC by cohort (``plot-auc``), relative lift (``plot-lift``), paired lift (``plot-paired-lift``),
calibration (``plot-calibration``) and the gap to the oracle (``plot-oracle-gap``); the numbers
come from :mod:`report.views`.
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Mapping, Sequence, Tuple

from report import views as rv


def figure(figsize: Tuple[float, float], ncols: int = 0) -> Tuple[Any, Any]:
    """A pyplot-free matplotlib figure (no global backend or state touched) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols, squeeze=False) if ncols else fig.subplots()
    return fig, axes


def figure_to_img(fig: Any, element_id: str, alt: str) -> str:
    """The figure as an ``<img>`` tag with ``element_id`` and ``alt``, PNG inlined as base64."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img id="{html.escape(element_id)}" class="plot" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{data}">')


def plot_auc(metrics: Mapping[str, Any]) -> str:
    """AUC by slice per model with its 95% interval (``plot-auc``); a note where no model has an AUC."""
    models, slices = rv.models(metrics), rv.slices(metrics)
    fig, ax = figure((11, 4.2))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        xs, ys, lo_err, hi_err = [], [], [], []
        for j, slice_name in enumerate(slices):
            s = rv.stats(metrics, model, slice_name)
            if s["auc"] is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(s["auc"])
            lo, hi = s["auc_ci95"] if s["auc_ci95"] is not None else (s["auc"], s["auc"])
            lo_err.append(max(s["auc"] - lo, 0.0))
            hi_err.append(max(hi - s["auc"], 0.0))
        ax.errorbar(xs, ys, yerr=[lo_err, hi_err], fmt="o" if model != rv.ORACLE else "D", capsize=3,
                    color=rv.MODEL_COLOURS[model], label=rv.MODEL_LABELS[model], markersize=6)
    for j, slice_name in enumerate(slices):
        if all(rv.stats(metrics, m, slice_name)["auc"] is None for m in models):
            empty = all(rv.stats(metrics, m, slice_name)["examples"] == 0 for m in models)
            ax.text(j, 0.5, "no AUC\n" + ("(no examples)" if empty else "(one class only)"), ha="center",
                    va="center", color="#888888", fontsize=9, transform=ax.get_xaxis_transform())
    ax.axhline(0.5, color="#bbbbbb", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(slices)))
    ax.set_xticklabels([rv.slice_label(s) for s in slices])
    ax.set_xlim(-0.6, len(slices) - 0.4)
    ax.set_xlabel("slice (activity cohort = history size)")
    ax.set_ylabel("AUC (95% CI)")
    ax.set_title("AUC by cohort")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(models), fontsize=9, frameon=False)
    return figure_to_img(fig, "plot-auc", "AUC by cohort per model with 95% confidence intervals")


def cohort_axis(ax: Any, slices: Sequence[str], ylabel: str, title: str, margin: float,
                 zero_width: float) -> None:
    """Shared styling of the per-cohort difference plots: a zero line, cohort ticks, grid."""
    ax.axhline(0, color="#333333", linewidth=zero_width)
    ax.set_xticks(range(len(slices)))
    ax.set_xticklabels([rv.slice_label(s) for s in slices])
    ax.set_xlim(-0.6, len(slices) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=margin)
    ax.grid(axis="y", alpha=0.3)


def plot_lift(metrics: Mapping[str, Any]) -> str:
    """LiMAML's relative AUC lift over each baseline per slice (``plot-lift``); hatched when the
    marginal intervals overlap."""
    slices = rv.slices(metrics)
    baselines = [b for b in rv.BASELINES if b in metrics["models"]]
    fig, ax = figure((11, 4.2))
    width = 0.8 / max(len(baselines), 1)
    for i, baseline in enumerate(baselines):
        for j, slice_name in enumerate(slices):
            lift = rv.relative_lift(metrics, rv.LIMAML, baseline, slice_name)
            x = j - 0.4 + width * (i + 0.5)
            if lift is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", color="#888888", fontsize=8)
                continue
            colour = rv.MODEL_COLOURS[baseline]
            ax.bar(x, lift["lift_pct"], width=width * 0.9, color=colour if lift["significant"] else "white",
                   edgecolor=colour, hatch=None if lift["significant"] else "//", linewidth=1.2)
            label = f"{lift['lift_pct']:+.1f}%" + ("" if lift["significant"] else "\nn.s.")
            up = lift["lift_pct"] >= 0
            ax.annotate(label, (x, lift["lift_pct"]), xytext=(0, 3 if up else -3), textcoords="offset points",
                        ha="center", va="bottom" if up else "top", fontsize=8)
    for baseline in baselines:  # legend entries
        ax.bar([math.nan], [math.nan], color=rv.MODEL_COLOURS[baseline], label=f"vs {rv.MODEL_LABELS[baseline]}")
    ax.bar([math.nan], [math.nan], color="white", edgecolor="#555555", hatch="//",
           label="n.s.: 95% CIs overlap")
    cohort_axis(ax, slices, "relative AUC lift of LiMAML (%)",
                 "LiMAML's relative AUC lift over each baseline", margin=0.2, zero_width=0.8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(baselines) + 1, fontsize=9, frameon=False)
    return figure_to_img(fig, "plot-lift", "Relative AUC lift of LiMAML over each baseline by cohort")


def plot_paired(metrics: Mapping[str, Any], comparisons: Sequence[Tuple[str, str, str, Mapping[str, Any]]],
                element_id: str = "plot-paired-lift",
                title: str = "Paired lift: LiMAML's AUC minus each model's, on the same rows",
                alt: str = "AUC difference between LiMAML and each model by cohort with 95% paired "
                           "bootstrap intervals") -> str:
    """ΔAUC per slice of each comparison (:func:`report.views.comparisons`) with its paired
    interval; a point is hollow where the interval contains 0. Coloured by the model that is not
    LiMAML."""
    slices = rv.slices(metrics)
    fig, ax = figure((11, 4.2))
    width = 0.8 / max(len(comparisons), 1)
    for i, (_, reference, other, comparison) in enumerate(comparisons):
        colour = rv.colour(reference if other == rv.LIMAML else other)
        for j, slice_name in enumerate(slices):
            entry = rv.comparison_slice(comparison, slice_name)
            x = j - 0.4 + width * (i + 0.5)
            if entry["delta"] is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", color="#888888", fontsize=8)
                continue
            delta = entry["delta"]
            lo, hi = entry["ci95"] if entry["ci95"] is not None else (delta, delta)
            significant = rv.paired_verdict(entry) not in (None, rv.VERDICT_NS)
            ax.errorbar([x], [delta], yerr=[[max(delta - lo, 0.0)], [max(hi - delta, 0.0)]], fmt="o",
                        capsize=3, color=colour, markerfacecolor=colour if significant else "white",
                        markersize=6)
        ax.errorbar([math.nan], [math.nan], yerr=[[0], [0]], fmt="o", capsize=3, color=colour,
                    label=f"{rv.label(reference)} − {rv.label(other)}")
    ax.errorbar([math.nan], [math.nan], fmt="o", color="#555555", markerfacecolor="white",
                label="hollow: interval contains 0 (n.s.)")
    cohort_axis(ax, slices, "ΔAUC (95% paired bootstrap CI)", title, margin=0.15, zero_width=0.9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(comparisons) + 1, 4), fontsize=9,
              frameon=False)
    return figure_to_img(fig, element_id, alt)


def plot_calibration(calibration: Mapping[str, Sequence[Mapping[str, float]]], models: Sequence[str]) -> str:
    """Observed rate vs mean prediction per calibration bucket, one panel per model that has a
    TFMA calibration plot (``plot-calibration``)."""
    shown = [m for m in models if m in calibration]
    fig, axes = figure((2.9 * max(len(shown), 1), 3.3), ncols=max(len(shown), 1))
    for ax, model in zip(axes[0], shown):
        buckets = calibration[model]
        ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfect")
        if buckets:
            total = sum(b["examples"] for b in buckets)
            xs = [b["mean_prediction"] for b in buckets]
            ys = [b["observed_rate"] for b in buckets]
            sizes = [20 + 400 * b["examples"] / total for b in buckets]
            ax.plot(xs, ys, color=rv.MODEL_COLOURS[model], linewidth=1)
            ax.scatter(xs, ys, s=sizes, color=rv.MODEL_COLOURS[model], alpha=0.8, zorder=3)
        else:
            ax.text(0.5, 0.5, "no calibration plot", ha="center", va="center", color="#888888")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_title(rv.MODEL_LABELS[model], fontsize=10)
        ax.set_xlabel("mean predicted", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("observed click rate", fontsize=9)
    fig.suptitle("Calibration (overall; marker area ∝ examples in the bucket)", fontsize=11)
    fig.tight_layout()
    return figure_to_img(fig, "plot-calibration", "Calibration: observed rate vs mean prediction per bucket")


def plot_oracle_gap(metrics: Mapping[str, Any]) -> str:
    """Oracle AUC minus each model's AUC per slice (``plot-oracle-gap``)."""
    slices = rv.slices(metrics)
    models = [m for m in rv.models(metrics) if m != rv.ORACLE]
    fig, ax = figure((11, 3.8))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        xs, gaps = [], []
        for j, slice_name in enumerate(slices):
            gap = rv.oracle_gap(metrics, model, slice_name)
            if gap is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                gaps.append(gap)
        ax.bar(xs, gaps, width=width * 0.9, color=rv.MODEL_COLOURS[model], label=rv.MODEL_LABELS[model],
               alpha=1.0 if model == rv.LIMAML else 0.55)
    ax.axhline(0, color="#333333", linewidth=0.8)
    ax.set_xticks(range(len(slices)))
    ax.set_xticklabels([rv.slice_label(s) for s in slices])
    ax.set_xlim(-0.6, len(slices) - 0.4)
    ax.set_ylabel("oracle AUC − model AUC")
    ax.set_title("Gap to the oracle (best possible AUC on these examples); lower is better")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(models), fontsize=9, frameon=False)
    return figure_to_img(fig, "plot-oracle-gap", "AUC gap of each model to the oracle by cohort")
