"""The report's HTML tables: TFMA slice metrics (``slice-table``), relative lift (``lift-table``)
and paired comparisons (``paired-table``); the numbers come from :mod:`report.views`.
"""
from __future__ import annotations

import html
from typing import Any, Mapping, Sequence, Tuple

from report import views as rv


def slice_table(rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any]) -> str:
    """The TFMA slice metrics table (``slice-table``): one row per model and slice, plus the gap
    to the oracle when there is one."""
    with_oracle = rv.ORACLE in metrics["models"]
    head = ["model", "slice", "AUC [95% CI]", "log loss", "examples", "users"]
    if with_oracle:
        head.append("gap to oracle")
    out = ['<table id="slice-table">', "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>",
           "<tbody>"]
    for row in rows:
        missing = [k for k in rv.TABLE_COLUMNS if k not in row]
        if missing:
            raise ValueError(f"slice table row {row!r} lacks {missing}")
        ci = row["auc_ci95"]
        auc = rv.fmt(row["auc"]) + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci is not None else "")
        cells = [rv.MODEL_LABELS.get(row["model"], row["model"]) + f" <code>{html.escape(row['model'])}</code>",
                 html.escape(rv.slice_label(row["slice"])), auc, rv.fmt(row["logloss"]),
                 f"{row['examples']:,}", f"{row['users']:,}"]
        if with_oracle:
            gap = None if row["model"] == rv.ORACLE else rv.oracle_gap(metrics, row["model"], row["slice"])
            cells.append(rv.fmt(gap))
        cls = ' class="limaml"' if row["model"] == rv.LIMAML else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def lift_table(metrics: Mapping[str, Any]) -> str:
    """LiMAML's relative AUC lift over each baseline per slice (``lift-table``)."""
    baselines = [b for b in rv.BASELINES if b in metrics["models"]]
    head = "".join(f"<th>vs {html.escape(rv.MODEL_LABELS[b])}</th>" for b in baselines)
    out = ['<table id="lift-table">', f"<thead><tr><th>slice</th>{head}</tr></thead>", "<tbody>"]
    for slice_name in rv.slices(metrics):
        cells = []
        for b in baselines:
            lift = rv.relative_lift(metrics, rv.LIMAML, b, slice_name)
            if lift is None:
                cells.append("—")
            else:
                tag, cls = ("significant", "significant") if lift["significant"] else ("n.s.", "ns")
                cells.append(f'{lift["lift_pct"]:+.2f}% <span class="{cls}">({tag})</span>')
        out.append(f"<tr><td>{html.escape(rv.slice_label(slice_name))}</td>"
                   + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def paired_table(metrics: Mapping[str, Any], comparisons: Sequence[Tuple[str, str, str, Mapping[str, Any]]],
                 table_id: str = "paired-table") -> str:
    """One row per comparison (:func:`report.views.comparisons`) and slice: ΔAUC, interval, p,
    counts and the verdict."""
    head = ["comparison", "slice", "ΔAUC", "95% CI", "p", "users", "examples", "resamples", "verdict"]
    out = [f'<table id="{html.escape(table_id)}">',
           "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    for key, reference, other, comparison in comparisons:
        for slice_name in rv.slices(metrics):
            entry = rv.comparison_slice(comparison, slice_name)
            ci = entry["ci95"]
            verdict = rv.paired_verdict(entry, rv.label(reference))
            if verdict is None:
                verdict_cell = '<span class="ns">— (AUC undefined)</span>'
            else:
                cls = "ns" if verdict == rv.VERDICT_NS else ("significant" if verdict.endswith(rv.VERDICT_BETTER)
                                                          else "worse")
                verdict_cell = f'<span class="{cls}">{html.escape(verdict)}</span>'
            delta = "—" if entry["delta"] is None else f"{entry['delta']:+.4f}"
            cells = [f"{html.escape(rv.label(reference))} vs {html.escape(rv.label(other))} "
                     f"<code>{html.escape(key)}</code>",
                     html.escape(rv.slice_label(slice_name)), delta,
                     "—" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]",
                     rv.fmt(entry["p_value"], 3), f"{entry['users']:,}", f"{entry['examples']:,}",
                     f"{entry['resamples']:,}", verdict_cell]
            out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)
