"""``metrics.json``: the evaluation numbers read back from TFMA's output, per model and cohort.

Shape (checked by :func:`validate_metrics`)::

    {"dataset": str, "protocol": str,
     "models": {"limaml": M, "global_dnn": M, "wide_deep_id": M
                [, "linear": M][, "linear_user_id": M][, "oracle": M]},
     "baseline_checks": {"global_dnn": B, "wide_deep_id": B},      # pairs whose models are present
     ["comparisons": {"limaml_vs_<other>": P, ...}]}               # when the caller passes them
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
``p_value`` null where the slice has one class only). Older ``metrics.json`` files without the
two keys still validate.

Where the numbers come from (TFMA 0.47.1, read with ``tfma.load_metrics``):

* ``auc``: metric key ``name="auc"`` (TFMA's thresholded AUC, ``num_thresholds`` from the config,
  10000 by default), ``model_name`` = the source's TFMA model name, ``is_diff=False``, unweighted.
* ``auc_ci95``: that key's ``confidence_interval.{lower,upper}_bound``. TFMA computes them as
  mean of the resampled AUCs ± t(0.975, dof) × standard error, where the resamples are, by the
  config's ``ci_method``, a delete-d jackknife over 20 random partitions (TFMA's default; dof 19)
  or 20 Poisson bootstrap resamples. The interval is centred on the resample mean, not on the
  point estimate, so on a tiny slice the point estimate can fall (slightly) outside it.
* ``logloss``: ``name="binary_crossentropy"``, computed by ``report.tfma_metrics.LogLoss`` (mean of
  -[y log p + (1-y) log(1-p)] over examples, natural log, p clipped to [1e-7, 1 - 1e-7]); TFMA
  0.47.1's own BinaryCrossEntropy double-counts when Beam merges partial results.
* ``examples``: ``name="example_count"``.
* ``users``: not a TFMA metric; the caller passes the number of distinct evaluated users
  (:func:`users_per_cohort_from_examples` counts them from the evaluation examples).

Missing values: a cohort with no evaluation example is absent from TFMA's output and gets
``{"auc": null, "auc_ci95": null, "logloss": null, "examples": 0, "users": <given, normally 0>}``.
A slice whose labels are all 0 or all 1 (``mean_label`` 0 or 1) gets ``auc`` and ``auc_ci95``
``null``: AUC is undefined there, and TFMA 0.47.1 reports 0.0 for it. A NaN from TFMA becomes
``null``. JSON has no NaN, hence ``null``.
"""
from __future__ import annotations

import copy
import dataclasses
import glob
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from limaml.config import DEFAULT_COHORT_EDGES
from limaml.data.protocols import cohort_names
from report import eval_config as ec
from report import paired as rp
from schema import features as F

DEFAULT_COHORTS: Tuple[str, ...] = tuple(cohort_names(DEFAULT_COHORT_EDGES))
REQUIRED_MODELS: Tuple[str, ...] = ("limaml", "global_dnn", "wide_deep_id")
OPTIONAL_MODELS: Tuple[str, ...] = ("linear", "linear_user_id", "oracle")
MODEL_NAMES: Tuple[str, ...] = REQUIRED_MODELS + OPTIONAL_MODELS
OVERALL = "overall"
SLICE_STATS_KEYS: Tuple[str, ...] = ("auc", "auc_ci95", "logloss", "examples", "users")


class MetricsShapeError(ValueError):
    """A metrics dict does not have the ``metrics.json`` shape; the message names the path."""


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where one model's TFMA results are.

    Attributes:
        name: the model's name in the report: ``limaml``, ``global_dnn``, ``wide_deep_id``,
            ``linear``, ``linear_user_id`` or ``oracle``.
        eval_output_dir: TFMA's output directory (a TFX Evaluator's ``evaluation`` artifact URI).
        tfma_model_name: the model's name in that output's metric keys: ``candidate`` or
            ``baseline`` for an Evaluator with a baseline, ``""`` for a single unnamed model.
    """

    name: str
    eval_output_dir: str
    tfma_model_name: str = ""

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"ModelSource.name must be one of {list(MODEL_NAMES)}, got {self.name!r}")
        if not isinstance(self.eval_output_dir, str) or not self.eval_output_dir:
            raise ValueError(f"ModelSource.eval_output_dir must be a path, got {self.eval_output_dir!r}")
        if not isinstance(self.tfma_model_name, str):
            raise ValueError(f"ModelSource.tfma_model_name must be a str, got {self.tfma_model_name!r}")


@dataclasses.dataclass
class _Value:
    value: Optional[float]
    lower: Optional[float] = None
    upper: Optional[float] = None


# slice name -> (tfma model name, metric name) -> value
_SliceTable = Dict[str, Dict[Tuple[str, str], _Value]]


def _finite(x: Optional[float]) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _slice_name(slice_key: Any, cohort_key: str) -> Optional[str]:
    """``overall`` for the empty slice key, the cohort value for a ``cohort_key`` slice, else None."""
    keys = list(slice_key.single_slice_keys)
    if not keys:
        return OVERALL
    if len(keys) != 1 or keys[0].column != cohort_key:
        return None
    kind = keys[0].WhichOneof("kind")
    value = getattr(keys[0], kind)
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _metric_value(kv: Any) -> _Value:
    value = kv.value
    lower = upper = None
    kind = value.WhichOneof("type")
    if kind == "double_value":
        point = value.double_value.value
    elif kind == "bounded_value":  # TFMA v1 style output
        point = value.bounded_value.value.value
        lower, upper = value.bounded_value.lower_bound.value, value.bounded_value.upper_bound.value
    else:
        return _Value(None)
    if kv.HasField("confidence_interval"):
        ci = kv.confidence_interval
        lower = ci.lower_bound.double_value.value if ci.lower_bound.HasField("double_value") else lower
        upper = ci.upper_bound.double_value.value if ci.upper_bound.HasField("double_value") else upper
    return _Value(_finite(point), _finite(lower), _finite(upper))


def _check_output_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"TFMA output directory {path!r} does not exist")
    if not glob.glob(os.path.join(path, "metrics*")):
        raise FileNotFoundError(f"TFMA output directory {path!r} holds no metrics* file "
                                f"(found {sorted(os.listdir(path))})")


def load_slice_metrics(eval_output_dir: str, cohort_key: str = F.COHORT) -> _SliceTable:
    """Reads every overall/cohort slice metric of one TFMA output.

    Args:
        eval_output_dir: TFMA's output directory.
        cohort_key: the feature the cohort slices are keyed by.

    Returns:
        ``{slice name: {(tfma model name, metric name): value}}`` with slice name ``overall`` or
        the cohort value; only unweighted, non-diff metrics without sub key.

    Raises:
        FileNotFoundError: no TFMA metrics in ``eval_output_dir``.
        RuntimeError: TFMA recorded an error for a slice.
    """
    import tensorflow_model_analysis as tfma  # heavy import, only when reading

    _check_output_dir(eval_output_dir)
    table: _SliceTable = {}
    for m in tfma.load_metrics(eval_output_dir):
        if m.HasField("cross_slice_key"):
            continue
        name = _slice_name(m.slice_key, cohort_key)
        if name is None:
            continue
        if "__ERROR__" in m.metrics:
            raise RuntimeError(f"TFMA failed on slice {name!r} in {eval_output_dir}: "
                               f"{m.metrics['__ERROR__'].debug_message}")
        entries = table.setdefault(name, {})
        for kv in m.metric_keys_and_values:
            key = kv.key
            if key.is_diff or key.example_weighted.value or key.output_name or key.HasField("sub_key") \
                    or key.aggregation_type.ByteSize():
                continue
            entries[(key.model_name, key.name)] = _metric_value(kv)
    return table


def _model_names(table: _SliceTable) -> List[str]:
    return sorted({model for entries in table.values() for model, _ in entries})


def _empty_stats(users: int) -> Dict[str, Any]:
    return {"auc": None, "auc_ci95": None, "logloss": None, "examples": 0, "users": users}


def _stats(entries: Mapping[Tuple[str, str], _Value], model: str, users: int,
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
                  comparisons: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Builds the ``metrics.json`` dict from TFMA outputs.

    Args:
        dataset: dataset name (e.g. ``movielens-100k``, ``synthetic``).
        protocol: evaluation protocol (``cutoff`` or ``budget``).
        sources: one ModelSource per model; ``limaml``, ``global_dnn`` and ``wide_deep_id`` are
            required, ``linear``, ``linear_user_id`` and ``oracle`` optional. Several may share an
            output directory.
        users_per_cohort: distinct evaluated users: ``{"overall": n, "0": n0, "1-4": n1, ...}``;
            a missing cohort counts 0 users, a missing ``overall`` the sum of the cohorts.
        cohorts: the cohort names, in report order.
        cohort_key: the feature TFMA sliced the cohorts by.
        comparisons: :func:`report.paired.paired_bootstrap`'s output (computed with the same
            ``cohorts``), stored as ``comparisons``; None: no such key.

    Returns:
        The dict described in this module's docstring (passes :func:`validate_metrics`), with
        ``baseline_checks`` always present (``{}`` without linear models).

    Raises:
        ValueError: a duplicate, missing or unknown model, bad user counts.
        MetricsShapeError: ``comparisons`` does not have the shape above.
        KeyError: a TFMA output lacks the source's model name or a metric.
        FileNotFoundError: a TFMA output directory is missing or empty.
    """
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"sources name models {duplicates} more than once")
    missing = [m for m in REQUIRED_MODELS if m not in names]
    if missing:
        raise ValueError(f"sources lack the required models {missing} (got {names})")
    users = _users(users_per_cohort, cohorts)
    tables: Dict[str, _SliceTable] = {}
    models: Dict[str, Any] = {}
    for source in sorted(sources, key=lambda s: MODEL_NAMES.index(s.name)):
        if source.eval_output_dir not in tables:
            tables[source.eval_output_dir] = load_slice_metrics(source.eval_output_dir, cohort_key)
        table = tables[source.eval_output_dir]
        if OVERALL not in table:
            raise KeyError(f"TFMA output {source.eval_output_dir} has no overall slice")
        available = _model_names(table)
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
    result: Dict[str, Any] = {"dataset": str(dataset), "protocol": str(protocol), "models": models,
                              "baseline_checks": rp.baseline_checks(models)}
    if comparisons is not None:
        result["comparisons"] = copy.deepcopy(dict(comparisons))
    validate_metrics(result, cohorts)
    return result


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


def read_calibration(sources: Sequence[ModelSource], slice_name: str = OVERALL,
                     cohort_key: str = F.COHORT) -> Dict[str, List[Dict[str, float]]]:
    """Reads TFMA's calibration plot (``calibration_plot``) of one slice, per model.

    Args:
        sources: the models (as for :func:`build_metrics`).
        slice_name: ``overall`` or a cohort name.
        cohort_key: the feature TFMA sliced the cohorts by.

    Returns:
        ``{model name: [bucket, ...]}`` with the non-empty buckets in threshold order, each
        ``{"lower": float, "upper": float, "examples": float, "mean_prediction": float,
        "observed_rate": float}`` (the -inf/+inf edge buckets clipped to [0, 1]). A model whose
        output has no plot for the slice maps to ``[]``.

    Raises:
        FileNotFoundError: a TFMA output directory is missing or empty.
    """
    import tensorflow_model_analysis as tfma

    cache: Dict[str, Dict[Tuple[str, str], Any]] = {}
    out: Dict[str, List[Dict[str, float]]] = {}
    for source in sources:
        if source.eval_output_dir not in cache:
            _check_output_dir(source.eval_output_dir)
            plots: Dict[Tuple[str, str], Any] = {}
            for p in tfma.load_plots(source.eval_output_dir):
                if p.HasField("cross_slice_key"):
                    continue
                name = _slice_name(p.slice_key, cohort_key)
                if name is None:
                    continue
                for kv in p.plot_keys_and_values:
                    if kv.key.example_weighted.value or kv.key.output_name or kv.key.HasField("sub_key"):
                        continue
                    if kv.value.HasField("calibration_histogram_buckets"):
                        plots[(name, kv.key.model_name)] = kv.value.calibration_histogram_buckets
            cache[source.eval_output_dir] = plots
        histogram = cache[source.eval_output_dir].get((slice_name, source.tfma_model_name))
        buckets: List[Dict[str, float]] = []
        if histogram is not None:
            for b in histogram.buckets:
                n = b.num_weighted_examples.value
                if n <= 0:
                    continue
                lower = max(0.0, b.lower_threshold_inclusive) if math.isfinite(b.lower_threshold_inclusive) else 0.0
                upper = min(1.0, b.upper_threshold_exclusive) if math.isfinite(b.upper_threshold_exclusive) else 1.0
                buckets.append({"lower": float(lower), "upper": float(upper), "examples": float(n),
                                "mean_prediction": float(b.total_weighted_refined_prediction.value / n),
                                "observed_rate": float(b.total_weighted_label.value / n)})
        out[source.name] = buckets
    return out


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
