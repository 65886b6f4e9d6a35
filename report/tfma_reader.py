"""Reading TFMA outputs: per-slice metrics and calibration plots of each model.

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
  (:func:`report.metrics.users_per_cohort_from_examples` counts them from the examples).

Missing values: a cohort with no evaluation example is absent from TFMA's output and gets
``{"auc": null, "auc_ci95": null, "logloss": null, "examples": 0, "users": <given, normally 0>}``.
A slice whose labels are all 0 or all 1 (``mean_label`` 0 or 1) gets ``auc`` and ``auc_ci95``
``null``: AUC is undefined there, and TFMA 0.47.1 reports 0.0 for it. A NaN from TFMA becomes
``null``. JSON has no NaN, hence ``null``.
"""
from __future__ import annotations

import dataclasses
import glob
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from report.metrics_schema import MODEL_NAMES, OVERALL
from schema import features as F


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where one model's TFMA results are.

    Attributes:
        name: the model's name in the report: ``limaml``, ``limaml_multi``, ``global_dnn``,
            ``wide_deep_id``, ``linear``, ``linear_user_id`` or ``oracle``.
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
class MetricValue:
    """A metric's point value and TFMA's interval bounds (None where absent or not finite)."""

    value: Optional[float]
    lower: Optional[float] = None
    upper: Optional[float] = None


SliceTable = Dict[str, Dict[Tuple[str, str], MetricValue]]


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


def _metric_value(kv: Any) -> MetricValue:
    value = kv.value
    lower = upper = None
    kind = value.WhichOneof("type")
    if kind == "double_value":
        point = value.double_value.value
    elif kind == "bounded_value":  # TFMA v1 style output
        point = value.bounded_value.value.value
        lower, upper = value.bounded_value.lower_bound.value, value.bounded_value.upper_bound.value
    else:
        return MetricValue(None)
    if kv.HasField("confidence_interval"):
        ci = kv.confidence_interval
        lower = ci.lower_bound.double_value.value if ci.lower_bound.HasField("double_value") else lower
        upper = ci.upper_bound.double_value.value if ci.upper_bound.HasField("double_value") else upper
    return MetricValue(_finite(point), _finite(lower), _finite(upper))


def _check_output_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"TFMA output directory {path!r} does not exist")
    if not glob.glob(os.path.join(path, "metrics*")):
        raise FileNotFoundError(f"TFMA output directory {path!r} holds no metrics* file "
                                f"(found {sorted(os.listdir(path))})")


def load_slice_metrics(eval_output_dir: str, cohort_key: str = F.COHORT) -> SliceTable:
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
    table: SliceTable = {}
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


def model_names(table: SliceTable) -> List[str]:
    """The TFMA model names present in a slice table, sorted."""
    return sorted({model for entries in table.values() for model, _ in entries})


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
