"""The Report component's logic: TFMA outputs and served models -> ``metrics.json`` + ``index.html``.

Plain functions, no TFX. :func:`write_run_report` is what the pipeline's Report component runs
(the oracle's TFMA run on synthetic data, per-row scores of every served model, then
:func:`write_scored_report`: paired bootstrap comparisons, ``limaml_multi`` when served, and
:func:`write_report`); :func:`write_report` alone turns any TFMA output
directories (and, optionally, paired comparisons of :func:`report.paired.paired_bootstrap`) into
the report files.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from report import eval_config as ec
from report import html as rh
from report import metrics as rm
from report import paired
from report.metrics_schema import MULTI_BLOCK
from schema import features as F

REFERENCE_MODEL = "limaml"
BOOTSTRAP_RESAMPLES = 1000
PER_ROW_SCORES = "per_row_scores.parquet"
ORACLE_TFMA = "oracle_tfma"


def ci_notes(sources: Sequence[rm.ModelSource]) -> List[str]:
    """One sentence per distinct CI method used by the sources' TFMA runs (read from their configs);
    runs without confidence intervals add none."""
    from tensorflow_model_analysis.writers import eval_config_writer

    notes: List[str] = []
    for path in dict.fromkeys(s.eval_output_dir for s in sources):
        try:
            config = eval_config_writer.load_eval_run(path)[0]
        except Exception:  # noqa: BLE001 - an output without eval_config.json only loses the note
            continue
        if config is None or not config.options.compute_confidence_intervals.value:
            continue
        note = ec.describe_ci_method(config)
        if note not in notes:
            notes.append(note)
    return notes


def run_oracle_evaluation(examples_pattern: str, output_dir: str, label_key: str = F.LABEL,
                          cohort_key: str = F.COHORT, prediction_key: str = F.ORACLE_PROB,
                          auc_num_thresholds: int = ec.DEFAULT_AUC_NUM_THRESHOLDS,
                          beam_pipeline_args: Optional[Sequence[str]] = None,
                          confidence_intervals: bool = False) -> rm.ModelSource:
    """Runs TFMA model-agnostically on a prediction stored in the examples (the synthetic oracle).

    Args:
        examples_pattern: glob of the evaluation tf.Example TFRecords (``.gz`` detected).
        output_dir: TFMA output directory to write.
        label_key: the label feature.
        cohort_key: the cohort feature.
        prediction_key: the feature holding the predicted probability.
        auc_num_thresholds: thresholds of TFMA's AUC.
        beam_pipeline_args: Beam flags (DirectRunner by default).
        confidence_intervals: whether TFMA computes its confidence intervals (the report's come
            from the per-row oracle probabilities, :func:`write_scored_report`).

    Returns:
        ``ModelSource("oracle", output_dir, "")`` for :func:`write_report`.
    """
    import glob as _glob

    import tensorflow_model_analysis as tfma
    from apache_beam.options.pipeline_options import PipelineOptions

    if not _glob.glob(examples_pattern):
        raise FileNotFoundError(f"no file matches {examples_pattern!r}")
    config = ec.make_oracle_eval_config(label_key, cohort_key, prediction_key,
                                        auc_num_thresholds=auc_num_thresholds,
                                        confidence_intervals=confidence_intervals)
    tfma.run_model_analysis(eval_config=config, data_location=examples_pattern, output_path=output_dir,
                            pipeline_options=PipelineOptions(list(beam_pipeline_args or [])))
    return rm.ModelSource("oracle", output_dir, ec.SINGLE_MODEL_NAME)


def write_report(dataset: str, protocol: str, sources: Sequence[rm.ModelSource], out_dir: str,
                 users_per_cohort: Optional[Mapping[str, int]] = None,
                 examples_pattern: Optional[str] = None,
                 cohorts: Sequence[str] = rm.DEFAULT_COHORTS, cohort_key: str = F.COHORT,
                 user_key: str = F.USER_ID, title: str = "LiMAML evaluation report",
                 comparisons: Optional[Mapping[str, Any]] = None,
                 notes_extra: Sequence[str] = (),
                 extra_models: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 intervals: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, str]:
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
        extra_models: ``{model name: M}`` of models without a TFMA output (e.g. ``limaml_multi``
            from :func:`report.score_metrics.model_metrics_from_scores`), stored in ``models``.
        intervals: ``{model name: M}`` whose ``auc_ci95`` replace the TFMA-read intervals
            (:func:`report.metrics.build_metrics`); with them, TFMA's CI-method notes are left
            out (``notes_extra`` says where the intervals come from).

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
                               cohort_key=cohort_key, comparisons=comparisons,
                               extra_models=extra_models, intervals=intervals)
    calibration = rm.read_calibration(sources, cohort_key=cohort_key)
    notes = [*(ci_notes(sources) if intervals is None else []), *(str(n) for n in notes_extra)]
    html_path = rh.render_report(metrics, calibration, None, out_dir, notes=notes, title=title)
    return {"html": html_path, "metrics_json": os.path.join(out_dir, "metrics.json")}


def compare_scored_models(user_ids: np.ndarray, labels: np.ndarray, scores: Mapping[str, np.ndarray],
                          cohorts: np.ndarray, cohort_names: Sequence[str], n_resamples: int, seed: int,
                          reference: str = REFERENCE_MODEL) -> Dict[str, Any]:
    """The paired comparisons of the report, from every scored model's per-row predictions.

    ``reference`` (LiMAML) vs every other scored model but the multi-block one
    (``limaml_vs_<model>``), and, when ``limaml_multi`` and ``limaml`` are both scored,
    ``limaml_multi_vs_limaml`` = AUC(limaml_multi) - AUC(limaml): the multi-block model is judged
    against the model it extends. Same resamples of users in every comparison of a slice (one
    stream per slice from ``seed``, :func:`report.paired.paired_bootstrap`).

    Args:
        user_ids, labels, cohorts: ``[N]`` user, 0/1 label and cohort of each evaluation row.
        scores: model name -> ``[N]`` predictions on those rows.
        cohort_names: cohorts in report order.
        n_resamples: bootstrap resamples of users.
        seed: bootstrap seed.
        reference: the model every other single-block model is compared with.

    Returns:
        ``{"<reference>_vs_<other>": P, ...[, "limaml_multi_vs_limaml": P]}`` (see
        :mod:`report.metrics_schema`).
    """
    single = {m: s for m, s in scores.items() if m != MULTI_BLOCK}
    out = paired.paired_bootstrap(user_ids, labels, single, cohorts, reference=reference,
                                  cohort_names=list(cohort_names), n_resamples=n_resamples, seed=seed)
    if MULTI_BLOCK in scores and REFERENCE_MODEL in scores:
        out.update(paired.paired_bootstrap(
            user_ids, labels, {MULTI_BLOCK: scores[MULTI_BLOCK], REFERENCE_MODEL: scores[REFERENCE_MODEL]},
            cohorts, reference=MULTI_BLOCK, cohort_names=list(cohort_names), n_resamples=n_resamples,
            seed=seed))
    return out


def has_oracle(examples_pattern: str) -> bool:
    """True when the evaluation examples carry the synthetic data's true click probability."""
    import glob

    import tensorflow as tf

    for path in sorted(glob.glob(examples_pattern))[:1]:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").take(1):
            return F.ORACLE_PROB in tf.train.Example.FromString(record.numpy()).features.feature
    return False


def write_run_report(dataset: str, protocol: str, examples_pattern: str,
                     sources: Sequence[rm.ModelSource], model_dirs: Mapping[str, str], out_dir: str,
                     cohorts: Sequence[str], seed: int, n_resamples: int = BOOTSTRAP_RESAMPLES,
                     reference: str = REFERENCE_MODEL,
                     beam_pipeline_args: Optional[Sequence[str]] = None,
                     progress: Optional[Callable[[str], None]] = print,
                     model_examples: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The pipeline's report of one run, written into ``out_dir``.

    Adds the oracle (TFMA on ``oracle_prob``, into ``out_dir/oracle_tfma``) when the examples
    carry it, scores the evaluation examples with every served model (``per_row_scores.parquet``),
    and writes ``metrics.json`` and ``index.html`` with :func:`write_scored_report` (paired
    bootstrap comparisons over users; ``limaml_multi`` vs ``limaml`` when both are served).

    Args:
        dataset: dataset name for the report.
        protocol: evaluation protocol (``cutoff`` / ``budget``).
        examples_pattern: glob of the evaluation tf.Example TFRecords (GZIP) that TFMA evaluated.
        sources: where each trained model's TFMA results are.
        model_dirs: ``{model name: served SavedModel folder}`` (``serving_default`` on
            serialized tf.Examples), ``reference`` among them; ``limaml_multi`` optional.
        out_dir: the report folder (created).
        cohorts: cohort names in report order.
        seed: bootstrap seed (the run's ``train.seed``).
        n_resamples: bootstrap resamples of users.
        reference: the model every other one is compared with.
        beam_pipeline_args: Beam flags of the oracle's TFMA run.
        progress: called with one line per finished step (None: silent).
        model_examples: ``{model name: glob}`` of models scored on their own example set (the
            multi-block model reads a 2E-wide ``meta_embedding``): the same rows, matched to the
            report's by user, label, cohort, item and timestamp.

    Returns:
        ``{"html": ..., "metrics_json": ..., "per_row_scores": ...}`` paths.
    """
    from components.report import scoring

    os.makedirs(out_dir, exist_ok=True)
    sources = list(sources)
    if has_oracle(examples_pattern):
        sources.append(run_oracle_evaluation(examples_pattern, os.path.join(out_dir, ORACLE_TFMA),
                                             beam_pipeline_args=beam_pipeline_args))
    own_sets = dict(model_examples or {})
    keys = scoring.ROW_KEY_FEATURES if own_sets else ()
    stored = {paired.ORACLE: F.ORACLE_PROB} if any(s.name == paired.ORACLE for s in sources) else {}
    rows = scoring.score_examples(scoring.example_files(examples_pattern),
                                  {n: d for n, d in model_dirs.items() if n not in own_sets},
                                  key_features=keys, stored_predictions=stored)
    for name, pattern in own_sets.items():
        own = scoring.score_examples(scoring.example_files(pattern), {name: model_dirs[name]},
                                     key_features=keys)
        rows.scores[name] = scoring.aligned_scores(rows, own, name)
    per_row = os.path.join(out_dir, PER_ROW_SCORES)
    rows.to_frame().to_parquet(per_row, index=False)
    if progress:
        progress(f"[report] scored {len(rows)} evaluation rows with {len(model_dirs)} models")
    note = (f"Paired comparisons: each model's served SavedModel (serving_default) scored the same "
            f"{len(rows)} evaluation rows; {n_resamples} bootstrap resamples of users, seed "
            f"{seed}; per-row predictions in {PER_ROW_SCORES}.")
    paths = write_scored_report(dataset, protocol, sources, rows, out_dir, cohorts, seed,
                                n_resamples=n_resamples, reference=reference, notes_extra=[note])
    if progress:
        progress(f"[report] written {paths['html']}")
    return {**paths, "per_row_scores": per_row}


def write_scored_report(dataset: str, protocol: str, sources: Sequence[rm.ModelSource], rows: Any,
                        out_dir: str, cohorts: Sequence[str], seed: int,
                        n_resamples: int = BOOTSTRAP_RESAMPLES, reference: str = REFERENCE_MODEL,
                        notes_extra: Sequence[str] = ()) -> Dict[str, str]:
    """``metrics.json`` and ``index.html`` from TFMA outputs and every model's per-row scores.

    The paired comparisons come from :func:`compare_scored_models`. Every scored model's AUC
    intervals come from its scores (:func:`report.score_metrics.model_metrics_from_scores`:
    percentile interval of the cluster bootstrap over users, same seed as the comparisons):
    TFMA computes none by default, and its row-level jackknife would treat one user's rows as
    independent. A scored model without a TFMA source (``limaml_multi`` until the pipeline
    evaluates it with TFMA) gets its whole ``models`` entry from its scores, and a note says so.

    Args:
        dataset: dataset name for the report.
        protocol: evaluation protocol.
        sources: where each TFMA-evaluated model's results are (the required models among them).
        rows: :class:`components.report.scoring.ScoredRows` of the evaluation rows.
        out_dir: the report folder (created).
        cohorts: cohort names in report order.
        seed: bootstrap seed.
        n_resamples: bootstrap resamples of users.
        reference: the model every other single-block model is compared with.
        notes_extra: sentences for the notes list.

    Returns:
        ``{"html": ..., "metrics_json": ...}`` paths.
    """
    from report import score_metrics

    comparisons = compare_scored_models(rows.user_ids, rows.labels, rows.scores, rows.cohorts, cohorts,
                                        n_resamples, seed, reference=reference)
    evaluated = {s.name for s in sources}
    scored = {name: score_metrics.model_metrics_from_scores(
                  rows.user_ids, rows.labels, values, rows.cohorts, list(cohorts), n_resamples, seed)
              for name, values in rows.scores.items()}
    extra = {name: entry for name, entry in scored.items() if name not in evaluated}
    intervals = {name: entry for name, entry in scored.items() if name in evaluated}
    notes = [f"AUC 95% intervals: percentile interval of the AUC over {n_resamples} bootstrap "
             "resamples of users (a drawn user brings all of its rows), from each model's per-row "
             "predictions; the AUC values themselves are TFMA's.", *notes_extra]
    if extra:
        notes.append(f"{', '.join(extra)}: no TFMA run; AUC (exact rank AUC), its 95% interval "
                     f"(percentile interval of {n_resamples} bootstrap resamples of users) and log "
                     "loss computed from the per-row predictions.")
    return write_report(dataset, protocol, sources, out_dir,
                        users_per_cohort=rows.users_per_cohort(list(cohorts)), cohorts=cohorts,
                        comparisons=comparisons, notes_extra=notes, extra_models=extra,
                        intervals=intervals)
