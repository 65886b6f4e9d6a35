"""``metrics.json``: the evaluation numbers read back from TFMA's output, per model and cohort.

:func:`build_metrics` assembles the dict; its shape and :func:`validate_metrics` are in
:mod:`report.metrics_schema`, the reading of TFMA outputs (:class:`ModelSource`,
:func:`load_slice_metrics`, :func:`read_calibration`, and where each number comes from) in
:mod:`report.tfma_reader`. The names below stay importable from here.

``users``: not a TFMA metric; the caller passes the number of distinct evaluated users
(:func:`users_per_cohort_from_examples` counts them from the evaluation examples). A cohort with no
evaluation example gets ``{"auc": null, "auc_ci95": null, "logloss": null, "examples": 0,
"users": <given, normally 0>}``; a slice whose labels are all 0 or all 1 gets ``auc`` and
``auc_ci95`` null (AUC is undefined there, and TFMA 0.47.1 reports 0.0 for it).
"""
from __future__ import annotations

import copy
import glob
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from report import eval_config as ec
from report import paired as rp
from report.metrics_schema import (  # noqa: F401 - re-exported: report.metrics is the entry point
    DEFAULT_COHORTS,
    MODEL_NAMES,
    OPTIONAL_MODELS,
    OVERALL,
    REQUIRED_MODELS,
    SLICE_STATS_KEYS,
    MetricsShapeError,
    validate_metrics,
)
from report.tfma_reader import (  # noqa: F401 - re-exported: report.metrics is the entry point
    MetricValue,
    ModelSource,
    SliceTable,
    load_slice_metrics,
    model_names,
    read_calibration,
)
from schema import features as F


def _empty_stats(users: int) -> Dict[str, Any]:
    return {"auc": None, "auc_ci95": None, "logloss": None, "examples": 0, "users": users}


def _stats(entries: Mapping[Tuple[str, str], MetricValue], model: str, users: int,
           where: str) -> Dict[str, Any]:
    count = entries.get((model, ec.EXAMPLE_COUNT_NAME))
    if count is None or count.value is None:
        raise KeyError(f"no {ec.EXAMPLE_COUNT_NAME!r} for TFMA model {model!r} in {where}")
    auc = entries.get((model, ec.AUC_NAME))
    if auc is None:
        raise KeyError(f"no {ec.AUC_NAME!r} for TFMA model {model!r} in {where}")
    logloss = entries.get((model, ec.LOGLOSS_NAME))
    if logloss is None:
        raise KeyError(f"no {ec.LOGLOSS_NAME!r} for TFMA model {model!r} in {where}")
    auc_value = auc.value
    mean_label = entries.get((model, ec.MEAN_LABEL_NAME))
    if mean_label is not None and mean_label.value is not None and mean_label.value in (0.0, 1.0):
        auc_value = None  # one class only: AUC undefined (TFMA reports 0.0 there)
    ci = None
    if auc_value is not None and auc.lower is not None and auc.upper is not None:
        ci = [auc.lower, auc.upper]
    return {"auc": auc_value, "auc_ci95": ci, "logloss": logloss.value,
            "examples": int(round(count.value)), "users": users}


def _replace_intervals(model: Dict[str, Any], entry: Mapping[str, Any], cohorts: Sequence[str],
                       name: str) -> None:
    """Sets every slice's ``auc_ci95`` of ``model`` (TFMA-read) from ``entry`` (same shape)."""
    slices = [(model["overall"], entry.get("overall"), OVERALL)]
    slices += [(model["cohorts"][c], entry.get("cohorts", {}).get(c), c) for c in cohorts]
    for target, source, where in slices:
        if source is None or "auc_ci95" not in source:
            raise ValueError(f"intervals[{name!r}] has no auc_ci95 for slice {where!r}")
        ci = source["auc_ci95"]
        target["auc_ci95"] = None if target["auc"] is None or ci is None else [float(ci[0]), float(ci[1])]


def _users(users_per_cohort: Mapping[str, int], cohorts: Sequence[str]) -> Dict[str, int]:
    if not isinstance(users_per_cohort, Mapping):
        raise TypeError(f"users_per_cohort must be a dict cohort -> users, got {users_per_cohort!r}")
    unknown = set(users_per_cohort) - set(cohorts) - {OVERALL}
    if unknown:
        raise ValueError(f"users_per_cohort has unknown cohorts {sorted(unknown)}; "
                         f"expected {OVERALL!r} and {list(cohorts)}")
    out: Dict[str, int] = {}
    for key in (OVERALL, *cohorts):
        value = users_per_cohort.get(key, None)
        if value is None:
            value = sum(int(users_per_cohort.get(c, 0)) for c in cohorts) if key == OVERALL else 0
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"users_per_cohort[{key!r}] must be a non-negative int, got {value!r}")
        out[key] = int(value)
    return out


def build_metrics(dataset: str, protocol: str, sources: Sequence[ModelSource],
                  users_per_cohort: Mapping[str, int], cohorts: Sequence[str] = DEFAULT_COHORTS,
                  cohort_key: str = F.COHORT,
                  comparisons: Optional[Mapping[str, Any]] = None,
                  extra_models: Optional[Mapping[str, Mapping[str, Any]]] = None,
                  intervals: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, Any]:
    """Builds the ``metrics.json`` dict from TFMA outputs (and models measured elsewhere).

    Args:
        dataset: dataset name (e.g. ``movielens-100k``, ``synthetic``).
        protocol: evaluation protocol (``cutoff`` or ``budget``).
        sources: one ModelSource per model; ``limaml``, ``global_dnn`` and ``wide_deep_id`` are
            required, ``limaml_multi``, ``linear``, ``linear_user_id`` and ``oracle`` optional.
            Several may share an output directory.
        users_per_cohort: distinct evaluated users: ``{"overall": n, "0": n0, "1-4": n1, ...}``;
            a missing cohort counts 0 users, a missing ``overall`` the sum of the cohorts.
        cohorts: the cohort names, in report order.
        cohort_key: the feature TFMA sliced the cohorts by.
        comparisons: :func:`report.paired.paired_bootstrap`'s output (computed with the same
            ``cohorts``), stored as ``comparisons``; None: no such key.
        extra_models: ``{model name: M}`` entries of models without a TFMA output (e.g.
            :func:`report.score_metrics.model_metrics_from_scores` of ``limaml_multi``), stored
            beside the TFMA-read ones, in report order.
        intervals: ``{model name: M}`` (e.g. :func:`report.score_metrics.model_metrics_from_scores`
            of the model's per-row scores) whose slices' ``auc_ci95`` replace the TFMA-read
            ones (TFMA computes none by default, see :mod:`report.eval_config`); a slice whose
            TFMA AUC is null keeps a null interval. Models not named keep TFMA's.

    Returns:
        The dict described in this module's docstring (passes :func:`validate_metrics`), with
        ``baseline_checks`` always present (``{}`` without linear models).

    Raises:
        ValueError: a duplicate, missing or unknown model, bad user counts.
        MetricsShapeError: ``comparisons`` or an ``extra_models`` entry does not have the shape
            above.
        KeyError: a TFMA output lacks the source's model name or a metric.
        FileNotFoundError: a TFMA output directory is missing or empty.
    """
    extra = dict(extra_models or {})
    names = [s.name for s in sources] + list(extra)
    unknown = sorted(set(extra) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"extra_models names unknown models {unknown}; known: {list(MODEL_NAMES)}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"sources and extra_models name models {duplicates} more than once")
    missing = [m for m in REQUIRED_MODELS if m not in names]
    if missing:
        raise ValueError(f"sources lack the required models {missing} (got {names})")
    users = _users(users_per_cohort, cohorts)
    tables: Dict[str, SliceTable] = {}
    models: Dict[str, Any] = {}
    for source in sorted(sources, key=lambda s: MODEL_NAMES.index(s.name)):
        if source.eval_output_dir not in tables:
            tables[source.eval_output_dir] = load_slice_metrics(source.eval_output_dir, cohort_key)
        table = tables[source.eval_output_dir]
        if OVERALL not in table:
            raise KeyError(f"TFMA output {source.eval_output_dir} has no overall slice")
        available = model_names(table)
        if source.tfma_model_name not in available:
            raise KeyError(f"TFMA output {source.eval_output_dir} has no model named "
                           f"{source.tfma_model_name!r} (for {source.name!r}); it has {available}")
        where = f"{source.eval_output_dir} (model {source.name!r})"
        overall = _stats(table[OVERALL], source.tfma_model_name, users[OVERALL], f"overall slice of {where}")
        per_cohort = {}
        for cohort in cohorts:
            if cohort in table:
                per_cohort[cohort] = _stats(table[cohort], source.tfma_model_name, users[cohort],
                                            f"cohort {cohort!r} of {where}")
            else:
                per_cohort[cohort] = _empty_stats(users[cohort])
        models[source.name] = {"overall": overall, "cohorts": per_cohort}
    for name, entry in (intervals or {}).items():
        if name in models:
            _replace_intervals(models[name], entry, cohorts, name)
    models.update(copy.deepcopy(extra))
    models = {m: models[m] for m in MODEL_NAMES if m in models}
    result: Dict[str, Any] = {"dataset": str(dataset), "protocol": str(protocol), "models": models,
                              "baseline_checks": rp.baseline_checks(models)}
    if comparisons is not None:
        result["comparisons"] = copy.deepcopy(dict(comparisons))
    validate_metrics(result, cohorts)
    return result


def users_per_cohort_from_examples(file_pattern: str, user_key: str = F.USER_ID,
                                   cohort_key: str = F.COHORT,
                                   cohorts: Sequence[str] = DEFAULT_COHORTS) -> Dict[str, int]:
    """Counts distinct users overall and per cohort in TFRecord files of ``tf.Example``.

    Args:
        file_pattern: glob of the evaluation examples (``*.gz`` files are read as GZIP, as TFX's
            ExampleGen writes them).
        user_key: the user id feature.
        cohort_key: the cohort feature.
        cohorts: the cohort names (all appear in the result, 0 when absent).

    Returns:
        ``{"overall": n, cohort: n_cohort, ...}``.

    Raises:
        FileNotFoundError: nothing matches ``file_pattern``.
        ValueError: an example lacks the user or cohort feature, or has an unknown cohort.
    """
    import tensorflow as tf

    files = sorted(glob.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no file matches {file_pattern!r}")
    users: Dict[str, set] = {c: set() for c in cohorts}
    everyone: set = set()
    for path in files:
        compression = "GZIP" if path.endswith(".gz") else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            feats = example.features.feature
            values = []
            for key in (user_key, cohort_key):
                if key not in feats:
                    raise ValueError(f"an example in {path} has no feature {key!r}")
                f = feats[key]
                kind = f.WhichOneof("kind")
                vals = list(getattr(f, kind).value) if kind else []
                if not vals:
                    raise ValueError(f"an example in {path} has an empty feature {key!r}")
                v = vals[0]
                values.append(v.decode("utf-8") if isinstance(v, bytes) else str(v))
            user, cohort = values
            if cohort not in users:
                raise ValueError(f"an example in {path} has cohort {cohort!r}, not one of {list(cohorts)}")
            users[cohort].add(user)
            everyone.add(user)
    return {OVERALL: len(everyone), **{c: len(u) for c, u in users.items()}}
