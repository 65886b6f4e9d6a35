"""``experiment.html``: the seeds experiment (``limaml experiment``) as pictures.

Two plots: AUC per cohort, mean over seeds with the seeds' standard deviation as error bars,
one line per model; and LiMAML's paired AUC difference to every model with the 95% bootstrap
interval over users (the difference averaged over seeds). A third plot gives the AUC by the
number of support rows MEG adapts each user on, when the summary has it. A table repeats the
paired numbers.
"""
from __future__ import annotations

import html
import os
from typing import Any, Mapping

from report.plots import figure, figure_to_img


def _plot_auc(summary: Mapping[str, Any], key: str = "auc_mean_sd", by: str = "cohort",
              name: str = "experiment-auc") -> str:
    stats = summary[key]
    slices = list(next(iter(stats.values())).keys()) if stats else []
    fig, ax = figure((8, 4))
    x = list(range(len(slices)))
    for i, (model, by_slice) in enumerate(stats.items()):
        means = [by_slice[s][0] if by_slice[s][0] is not None else float("nan") for s in slices]
        sds = [by_slice[s][1] or 0.0 for s in slices]
        ax.errorbar([v + 0.06 * (i - len(stats) / 2) for v in x], means, yerr=sds, marker="o",
                    capsize=3, label=model)
    if "oracle" in summary and key == "auc_mean_sd":
        ax.plot(x, [summary["oracle"].get(s) for s in slices], "k--", label="oracle")
    ax.set_xticks(x)
    ax.set_xticklabels(slices)
    ax.set_xlabel(by)
    ax.set_ylabel("query AUC (mean ± sd over seeds)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=4)
    return figure_to_img(fig, name, f"AUC by {by}, mean and sd over seeds")


def _plot_paired(summary: Mapping[str, Any]) -> str:
    comps = summary.get("comparisons", {})
    fig, ax = figure((8, 4))
    for i, (name, comp) in enumerate(comps.items()):
        slices = ["overall"] + list(comp["cohorts"])
        entries = [comp["overall"]] + [comp["cohorts"][c] for c in comp["cohorts"]]
        xs, ys, lo, hi = [], [], [], []
        for j, e in enumerate(entries):
            if e.get("delta") is None:
                continue
            xs.append(j + 0.08 * (i - len(comps) / 2))
            ys.append(e["delta"])
            lo.append(e["delta"] - e["ci95"][0])
            hi.append(e["ci95"][1] - e["delta"])
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, linestyle="none", label=name)
        ax.set_xticks(range(len(slices)))
        ax.set_xticklabels(slices)
    ax.axhline(0.0, color="k", linewidth=0.8)
    ax.set_ylabel("paired AUC difference (95% bootstrap CI)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    return figure_to_img(fig, "experiment-paired", "paired AUC difference of LiMAML to each model")


def _table(summary: Mapping[str, Any]) -> str:
    rows = []
    for name, comp in summary.get("comparisons", {}).items():
        for slice_name, e in [("overall", comp["overall"])] + list(comp["cohorts"].items()):
            ci = e.get("ci95")
            verdict = ("n.s." if ci is None or ci[0] <= 0 <= ci[1]
                       else ("LiMAML better" if ci[0] > 0 else "LiMAML worse"))
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(slice_name)}</td>"
                        f"<td>{e.get('delta')}</td><td>{ci}</td><td>{e.get('users')}</td>"
                        f"<td>{verdict}</td></tr>")
    return ("<table><tr><th>comparison</th><th>slice</th><th>ΔAUC</th><th>95% CI</th>"
            "<th>users</th><th>verdict</th></tr>" + "".join(rows) + "</table>")


def render_experiment(summary: Mapping[str, Any], out_dir: str) -> str:
    """Writes ``experiment.html`` into ``out_dir``; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    title = (f"LiMAML experiment: {summary.get('dataset')} ({summary.get('protocol')}), "
             f"seeds {summary.get('seeds')}, {summary.get('n_query')} query rows"
             + (f", cross-fitted over {summary['folds']} user folds (every user evaluated once)"
                if summary.get("folds") else ""))
    body = f"<h1>{html.escape(title)}</h1>" + _plot_auc(summary) + _plot_paired(summary)
    if summary.get("auc_by_support_rows"):
        body += _plot_auc(summary, "auc_by_support_rows", "support rows MEG adapts on",
                          "experiment-auc-support")
    body += _table(summary)
    path = os.path.join(out_dir, "experiment.html")
    with open(path + ".tmp", "w") as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                f"</title></head><body>{body}</body></html>")
    os.replace(path + ".tmp", path)
    return path
