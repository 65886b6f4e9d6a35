"""The self-contained HTML evaluation report (``index.html`` + ``metrics.json``).

Plots are drawn with matplotlib and embedded as base64 PNG; styles are inline; the page loads
nothing from anywhere, so it can be opened from an artifact store or attached to a review.

Elements (ids): summary (``summary``), under-trained baseline warning (``baseline-warning``, only
when a baseline is flagged), AUC by cohort (``plot-auc``), paired lift chart and table
(``plot-paired-lift``, ``paired-table``, only with ``comparisons``), multi-block LiMAML vs
LiMAML (``multi-block``, ``plot-multi-paired``, ``multi-paired-table``, only with
``limaml_multi``), relative lift (``plot-lift``, ``lift-table``), gap to oracle
(``plot-oracle-gap``, only with an oracle),
calibration (``plot-calibration``), TFMA slice metrics (``slice-table``).

This module assembles the page; the numbers are in :mod:`report.views`, the plots in
:mod:`report.plots`, the tables in :mod:`report.html_tables`.
"""
from __future__ import annotations

import html
import json
import os
from typing import Any, List, Mapping, Optional, Sequence

from report import html_tables as rt
from report import metrics_schema as ms
from report import plots as rplt
from report import views as rv
from report.views import (  # noqa: F401 - the public names of this module before the split
    BASELINES,
    LIMAML,
    MODEL_COLOURS,
    MODEL_LABELS,
    ORACLE,
    TABLE_COLUMNS,
    VERDICT_BETTER,
    VERDICT_NS,
    VERDICT_WORSE,
    make_slice_table_rows,
    oracle_gap,
    paired_verdict,
    relative_lift,
    under_trained_warnings,
)


def _warning_block(metrics: Mapping[str, Any]) -> str:
    warnings = rv.under_trained_warnings(metrics)
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return ('<div class="warning" id="baseline-warning"><b>Warning: under-trained baseline.</b> '
            "A lift over such a baseline says little about LiMAML."
            f"<ul>{items}</ul></div>")


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
    overall = {m: metrics["models"][m]["overall"] for m in rv.models(metrics)}
    aucs = ", ".join(f"{html.escape(rv.MODEL_LABELS[m])} {rv.fmt(s['auc'])}" for m, s in overall.items())
    parts.append(f"Overall AUC: {aucs}.")
    comparisons = rv.comparisons(metrics)
    for _, reference, other, comparison in comparisons:
        entry = comparison["overall"]
        verdict = rv.paired_verdict(entry, rv.label(reference))
        if verdict is None:
            continue
        ci = entry["ci95"]
        interval = "" if ci is None else f" [{ci[0]:+.4f}, {ci[1]:+.4f}]"
        parts.append(f"ΔAUC {html.escape(rv.label(reference))} − {html.escape(rv.label(other))}: "
                     f"{entry['delta']:+.4f}{interval} ({html.escape(verdict)}, paired).")
    for b in ([] if rv.comparisons(metrics, rv.LIMAML) else rv.BASELINES):
        lift = rv.relative_lift(metrics, rv.LIMAML, b, ms.OVERALL) if b in metrics["models"] else None
        if lift is not None:
            tag = "significant" if lift["significant"] else "not significant: 95% CIs overlap"
            parts.append(f"LiMAML vs {html.escape(rv.MODEL_LABELS[b])}: {lift['lift_pct']:+.2f}% AUC ({tag}).")
    for warning in rv.under_trained_warnings(metrics):
        parts.append(html.escape(warning) + ".")
    gap = rv.oracle_gap(metrics, rv.LIMAML, ms.OVERALL)
    if gap is not None:
        parts.append(f"LiMAML's gap to oracle: {gap:.4f} AUC.")
    n = overall[rv.LIMAML] if rv.LIMAML in overall else next(iter(overall.values()))
    parts.append(f"{n['examples']:,} evaluation examples from {n['users']:,} users.")
    return " ".join(parts)


def _multi_block_section(metrics: Mapping[str, Any]) -> List[str]:
    """The multi-block section (``multi-block``): ``limaml_multi``'s paired difference to LiMAML
    per cohort (plot ``plot-multi-paired``, table ``multi-paired-table``); empty without it."""
    multi = rv.comparisons(metrics, rv.MULTI_BLOCK)
    if rv.MULTI_BLOCK not in metrics["models"] and not multi:
        return []
    out = ['<h2 id="multi-block">Multi-block LiMAML vs LiMAML</h2>',
           "<p>LiMAML multi-block (<code>limaml_multi</code>) adds a second meta block adapted per user "
           "× primary genre on the user's history in that genre; the global block reads both "
           "embeddings. Its AUC by cohort is in the AUC plot and the slice table beside the other "
           "models.</p>"]
    if not multi:
        return out + ['<p class="meta">No paired comparison with LiMAML (no per-row scores of both).</p>']
    return out + [
        rplt.plot_paired(metrics, multi, "plot-multi-paired",
                         "Paired difference: LiMAML multi-block's AUC minus LiMAML's, on the same rows",
                         "AUC difference between LiMAML multi-block and LiMAML by cohort with 95% paired "
                         "bootstrap intervals"),
        rt.paired_table(metrics, multi, "multi-paired-table"),
        '<p class="meta">ΔAUC = AUC(LiMAML multi-block) − AUC(LiMAML) on the same query rows, with the '
        "same paired cluster bootstrap over users as above.</p>",
    ]


def render_report(metrics: Mapping[str, Any], calibration: Mapping[str, Sequence[Mapping[str, float]]],
                  slice_table_rows: Optional[Sequence[Mapping[str, Any]]], out_dir: str,
                  notes: Sequence[str] = (), title: str = "LiMAML evaluation report") -> str:
    """Writes ``index.html`` and ``metrics.json`` into ``out_dir``.

    Args:
        metrics: the ``metrics.json`` dict (validated first). Its ``comparisons`` (when present)
            become the paired lift chart and table; its ``baseline_checks`` (computed from the
            models when absent) the under-trained warning block.
        calibration: ``report.metrics.read_calibration`` output (model -> buckets).
        slice_table_rows: rows of the slice table (see :func:`report.views.make_slice_table_rows`); None: made
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
        cohorts = list(ms.DEFAULT_COHORTS)  # validate_metrics names what is wrong
    ms.validate_metrics(metrics, cohorts=cohorts)
    if rv.LIMAML not in metrics["models"]:
        raise ValueError("metrics has no 'limaml' model")
    rows = rv.make_slice_table_rows(metrics) if slice_table_rows is None else list(slice_table_rows)
    os.makedirs(out_dir, exist_ok=True)
    models = rv.models(metrics)
    sections = [
        "<h2>AUC by cohort</h2>",
        rplt.plot_auc(metrics),
    ]
    lift_comparisons = rv.comparisons(metrics, rv.LIMAML)
    if lift_comparisons:
        sections += [
            "<h2>Paired lift of LiMAML</h2>",
            rplt.plot_paired(metrics, lift_comparisons),
            rt.paired_table(metrics, lift_comparisons),
            "<p class=\"meta\">ΔAUC = AUC(LiMAML) − AUC(model) on the same query rows. 95% CI: percentile "
            "interval of a paired cluster bootstrap over users (each resample draws the slice's users with "
            "replacement, every drawn user brings all its rows, both models are scored on the same resample). "
            "p: two-sided bootstrap p-value. Verdict: better / worse when the interval excludes 0, "
            "n.s. when it contains 0.</p>",
        ]
    sections += _multi_block_section(metrics)
    sections += [
        "<h2>Relative AUC lift of LiMAML</h2>",
        rplt.plot_lift(metrics),
        rt.lift_table(metrics),
        "<p class=\"meta\">Lift = AUC(LiMAML) / AUC(baseline) − 1. n.s. = not significant: the two 95% "
        "confidence intervals overlap (a conservative check on marginal intervals"
        + ("; the paired intervals above are the test of a difference" if lift_comparisons else "")
        + ").</p>",
    ]
    if rv.ORACLE in metrics["models"]:
        sections += ["<h2>LiMAML's gap to oracle</h2>",
                     "<p>The oracle scores each example with its true click probability (synthetic data), "
                     "so its AUC is the best any model can reach on these examples.</p>",
                     rplt.plot_oracle_gap(metrics)]
    sections += ["<h2>Calibration</h2>", rplt.plot_calibration(calibration, models),
                 "<h2>TFMA slice metrics</h2>", rt.slice_table(rows, metrics)]
    default_notes = [
        "AUC: TFMA's thresholded AUC; log loss: mean binary cross-entropy (natural log, TFMA custom "
        "metric report.tfma_metrics.LogLoss).",
        "A cohort without evaluation examples shows — (null in metrics.json) for AUC and log loss; "
        "a cohort whose labels are all 0 or all 1 shows — for AUC (undefined there).",
    ]
    if rv.comparisons(metrics):
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
