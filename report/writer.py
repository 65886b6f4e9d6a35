"""``write_report``: TFMA outputs -> ``metrics.json`` + ``index.html`` (the Report component's logic).

Plain function, no TFX: the pipeline's Report component calls it with the Evaluators' output
URIs (and, optionally, the paired comparisons of :func:`report.paired.paired_bootstrap`); it can
equally run by hand on any TFMA output directories.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from report import eval_config as ec
from report import html as rh
from report import metrics as rm
from schema import features as F


def ci_notes(sources: Sequence[rm.ModelSource]) -> List[str]:
    """One sentence per distinct CI method used by the sources' TFMA runs (read from their configs)."""
    from tensorflow_model_analysis.writers import eval_config_writer

    notes: List[str] = []
    for path in dict.fromkeys(s.eval_output_dir for s in sources):
        try:
            config = eval_config_writer.load_eval_run(path)[0]
        except Exception:  # noqa: BLE001 - an output without eval_config.json only loses the note
            continue
        if config is None:
            continue
        note = ec.describe_ci_method(config)
        if note not in notes:
            notes.append(note)
    return notes


def run_oracle_evaluation(examples_pattern: str, output_dir: str, label_key: str = F.LABEL,
                          cohort_key: str = F.COHORT, prediction_key: str = F.ORACLE_PROB,
                          auc_num_thresholds: int = ec.DEFAULT_AUC_NUM_THRESHOLDS,
                          beam_pipeline_args: Optional[Sequence[str]] = None) -> rm.ModelSource:
    """Runs TFMA model-agnostically on a prediction stored in the examples (the synthetic oracle).

    Args:
        examples_pattern: glob of the evaluation tf.Example TFRecords (``.gz`` detected).
        output_dir: TFMA output directory to write.
        label_key: the label feature.
        cohort_key: the cohort feature.
        prediction_key: the feature holding the predicted probability.
        auc_num_thresholds: thresholds of TFMA's AUC.
        beam_pipeline_args: Beam flags (DirectRunner by default).

    Returns:
        ``ModelSource("oracle", output_dir, "")`` for :func:`write_report`.
    """
    import glob as _glob

    import tensorflow_model_analysis as tfma
    from apache_beam.options.pipeline_options import PipelineOptions

    if not _glob.glob(examples_pattern):
        raise FileNotFoundError(f"no file matches {examples_pattern!r}")
    config = ec.make_oracle_eval_config(label_key, cohort_key, prediction_key,
                                        auc_num_thresholds=auc_num_thresholds)
    tfma.run_model_analysis(eval_config=config, data_location=examples_pattern, output_path=output_dir,
                            pipeline_options=PipelineOptions(list(beam_pipeline_args or [])))
    return rm.ModelSource("oracle", output_dir, ec.SINGLE_MODEL_NAME)


def write_report(dataset: str, protocol: str, sources: Sequence[rm.ModelSource], out_dir: str,
                 users_per_cohort: Optional[Mapping[str, int]] = None,
                 examples_pattern: Optional[str] = None,
                 cohorts: Sequence[str] = rm.DEFAULT_COHORTS, cohort_key: str = F.COHORT,
                 user_key: str = F.USER_ID, title: str = "LiMAML evaluation report",
                 comparisons: Optional[Mapping[str, Any]] = None,
                 notes_extra: Sequence[str] = ()) -> Dict[str, str]:
    """Reads the TFMA outputs and writes ``metrics.json`` and ``index.html`` into ``out_dir``.

    Args:
        dataset: dataset name for the report.
        protocol: evaluation protocol (``cutoff`` / ``budget``).
        sources: where each model's TFMA results are (limaml, global_dnn, wide_deep_id; optional
            linear, linear_user_id, oracle), e.g. ``ModelSource("limaml", <Evaluator A uri>, "candidate")``,
            ``ModelSource("wide_deep_id", <Evaluator A uri>, "baseline")``,
            ``ModelSource("global_dnn", <Evaluator B uri>, "")``.
        out_dir: output folder (created).
        users_per_cohort: distinct evaluated users ``{"overall": n, cohort: n_c}``; None: counted
            from ``examples_pattern``.
        examples_pattern: glob of the evaluation tf.Example TFRecords (``*.gz`` read as GZIP);
            used only when ``users_per_cohort`` is None.
        cohorts: cohort names in report order.
        cohort_key: the cohort feature TFMA sliced by.
        user_key: the user id feature (for counting users).
        title: page title.
        comparisons: paired comparisons from :func:`report.paired.paired_bootstrap` (same
            ``cohorts``), stored as ``metrics.json``'s ``comparisons`` and drawn as the paired
            lift chart and table; None: neither.
        notes_extra: extra sentences for the report's notes list (after the CI-method notes).

    Returns:
        ``{"html": <out_dir>/index.html, "metrics_json": <out_dir>/metrics.json}``.

    Raises:
        ValueError: neither ``users_per_cohort`` nor ``examples_pattern`` given, or bad inputs
            (see :func:`report.metrics.build_metrics`).
        report.metrics.MetricsShapeError: ``comparisons`` has the wrong shape.
    """
    if users_per_cohort is None:
        if not examples_pattern:
            raise ValueError("write_report needs users_per_cohort or examples_pattern to count users")
        users_per_cohort = rm.users_per_cohort_from_examples(examples_pattern, user_key=user_key,
                                                             cohort_key=cohort_key, cohorts=cohorts)
    if isinstance(notes_extra, str):
        raise TypeError("notes_extra must be a sequence of sentences, not one string")
    metrics = rm.build_metrics(dataset, protocol, sources, users_per_cohort, cohorts=cohorts,
                               cohort_key=cohort_key, comparisons=comparisons)
    calibration = rm.read_calibration(sources, cohort_key=cohort_key)
    notes = [*ci_notes(sources), *(str(n) for n in notes_extra)]
    html_path = rh.render_report(metrics, calibration, None, out_dir, notes=notes, title=title)
    return {"html": html_path, "metrics_json": os.path.join(out_dir, "metrics.json")}
