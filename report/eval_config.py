"""TFMA ``EvalConfig`` builders for LiMAML's Evaluators (DESIGN.md section 2).

The pipeline runs TFMA up to three times on the same evaluation (query) examples:

* Evaluator A: candidate = ``limaml``, baseline = ``wide_deep_id``
  (``make_eval_config(with_baseline=True)``; TFMA model names ``candidate`` / ``baseline``);
* Evaluator B: ``global_dnn`` alone (``make_eval_config(with_baseline=False)``; TFMA model name
  ``""`` unless ``model_name`` is given);
* synthetic data only: the oracle, model-agnostic, from the stored prediction ``oracle_prob``
  (``make_oracle_eval_config()``; TFMA model name ``""``).

All share the slicing (overall, then by activity cohort) and the metrics (AUC, log loss
named ``binary_crossentropy`` (our ``report.tfma_metrics.LogLoss``: TFMA 0.47.1's own
BinaryCrossEntropy miscounts), example count, mean prediction/label,
calibration, calibration plot). ``report.metrics`` reads exactly these metric names back.

TFMA's own confidence intervals are off by default (``confidence_intervals=False``): on the main
job's 2,914 ML-100K query rows they took one Evaluator from 7.9 s to 44.5 s (20 jackknife
partitions of every AUC's 10,000-threshold state, per slice and model). The report's AUC
intervals come from the cluster bootstrap over users of every model's per-row scores instead
(:func:`report.writer.write_scored_report`), which also respects that one user's rows are not
independent; turn TFMA's on (``EvaluationConfig.tfma_confidence_intervals``) to see them in the
TFMA dashboards too.
"""
from __future__ import annotations

import dataclasses
import json
from typing import List, Optional

import tensorflow_model_analysis as tfma

from report import tfma_metrics
from report.tfma_metrics import LOGLOSS_NAME
from schema import features as F

# Model names TFMA writes into its metric keys (``MetricKey.model_name``).
CANDIDATE_MODEL_NAME = "candidate"   # == tfma.CANDIDATE_KEY
BASELINE_MODEL_NAME = "baseline"     # == tfma.BASELINE_KEY
SINGLE_MODEL_NAME = ""               # an unnamed single ModelSpec

# Metric names as they appear in TFMA's output (``MetricKey.name``).
AUC_NAME = "auc"
LOGLOSS_MODULE = tfma_metrics.__name__  # LOGLOSS_NAME: the name report.tfma_metrics.LogLoss writes
EXAMPLE_COUNT_NAME = "example_count"
CALIBRATION_PLOT_NAME = "calibration_plot"
MEAN_PREDICTION_NAME = "mean_prediction"
MEAN_LABEL_NAME = "mean_label"
CALIBRATION_NAME = "calibration"

DEFAULT_AUC_NUM_THRESHOLDS = 10000
DEFAULT_CALIBRATION_BUCKETS = 10

_CI_METHODS = {
    "jackknife": tfma.ConfidenceIntervalOptions.JACKKNIFE,
    "poisson_bootstrap": tfma.ConfidenceIntervalOptions.POISSON_BOOTSTRAP,
}


@dataclasses.dataclass(frozen=True)
class BlessingThresholds:
    """When the Evaluator blesses the candidate (the Pusher only pushes blessed models).

    The thresholds apply to the overall slice only (cohort slices are reported, not gated).

    Attributes:
        min_auc: the candidate's overall AUC must be >= this (None: no absolute bound).
        min_auc_change: with a baseline, candidate AUC - baseline AUC must be >= this
            (e.g. ``-0.005`` tolerates a small regression, ``0.0`` demands no regression,
            ``0.01`` demands a lift). None: no change threshold.
        min_relative_auc_change: with a baseline, (candidate - baseline) / baseline must be
            >= this. None: no relative threshold.
    """

    min_auc: Optional[float] = 0.5
    min_auc_change: Optional[float] = -1e-10
    min_relative_auc_change: Optional[float] = None

    def __post_init__(self) -> None:
        for field in ("min_auc", "min_auc_change", "min_relative_auc_change"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, (int, float)):
                raise TypeError(f"BlessingThresholds.{field} must be a float or None, got {value!r}")
        if self.min_auc is not None and not 0.0 <= self.min_auc <= 1.0:
            raise ValueError(f"BlessingThresholds.min_auc must lie in [0, 1], got {self.min_auc!r}")

    def to_metric_threshold(self, with_baseline: bool) -> Optional[tfma.MetricThreshold]:
        """The AUC ``MetricThreshold`` (None when no threshold applies).

        Args:
            with_baseline: whether the evaluation has a baseline; change thresholds are only
                added with one (TFMA refuses change thresholds without a baseline).
        """
        threshold = tfma.MetricThreshold()
        if self.min_auc is not None:
            threshold.value_threshold.lower_bound.value = float(self.min_auc)
        if with_baseline and (self.min_auc_change is not None
                              or self.min_relative_auc_change is not None):
            change = threshold.change_threshold
            change.direction = tfma.MetricDirection.HIGHER_IS_BETTER
            if self.min_auc_change is not None:
                change.absolute.value = float(self.min_auc_change)
            if self.min_relative_auc_change is not None:
                change.relative.value = float(self.min_relative_auc_change)
        return threshold if threshold.ByteSize() else None


DEFAULT_THRESHOLDS = BlessingThresholds()  # frozen: safe as a shared default


def _metrics_specs(auc_num_thresholds: int, calibration_buckets: int,
                   auc_threshold: Optional[tfma.MetricThreshold]) -> List[tfma.MetricsSpec]:
    if not isinstance(auc_num_thresholds, int) or auc_num_thresholds < 10:
        raise ValueError(f"auc_num_thresholds must be an int >= 10, got {auc_num_thresholds!r}")
    if not isinstance(calibration_buckets, int) or calibration_buckets < 1:
        raise ValueError(f"calibration_buckets must be a positive int, got {calibration_buckets!r}")
    auc = tfma.MetricConfig(class_name="AUC",
                            config=json.dumps({"name": AUC_NAME, "num_thresholds": auc_num_thresholds}))
    if auc_threshold is not None:
        # Only on the overall slice: MetricConfig.threshold would apply to every cohort slice, so a
        # tiny or one-class cohort (TFMA's AUC is 0.0 there) would block the blessing.
        auc.per_slice_thresholds.add(slicing_specs=[tfma.SlicingSpec()], threshold=auc_threshold)
    metrics = [
        tfma.MetricConfig(class_name="ExampleCount", config=json.dumps({"name": EXAMPLE_COUNT_NAME})),
        auc,
        # Our LogLoss, not tfma.metrics.BinaryCrossEntropy, which double-counts when merging in
        # TFMA 0.47.1 (see report/tfma_metrics.py); same metric name.
        tfma.MetricConfig(class_name="LogLoss", module=LOGLOSS_MODULE, config=json.dumps({"name": LOGLOSS_NAME})),
        tfma.MetricConfig(class_name="MeanPrediction", config=json.dumps({"name": MEAN_PREDICTION_NAME})),
        tfma.MetricConfig(class_name="MeanLabel", config=json.dumps({"name": MEAN_LABEL_NAME})),
        tfma.MetricConfig(class_name="Calibration", config=json.dumps({"name": CALIBRATION_NAME})),
        tfma.MetricConfig(class_name="CalibrationPlot",
                          config=json.dumps({"name": CALIBRATION_PLOT_NAME, "num_buckets": calibration_buckets})),
    ]
    return [tfma.MetricsSpec(metrics=metrics)]


def _options(ci_method: str, confidence_intervals: bool) -> tfma.Options:
    if ci_method not in _CI_METHODS:
        raise ValueError(f"ci_method must be one of {sorted(_CI_METHODS)}, got {ci_method!r}")
    if not isinstance(confidence_intervals, bool):
        raise TypeError(f"confidence_intervals must be a bool, got {confidence_intervals!r}")
    options = tfma.Options()
    options.compute_confidence_intervals.value = confidence_intervals
    options.confidence_intervals.method = _CI_METHODS[ci_method]
    return options


def _slicing_specs(cohort_key: str) -> List[tfma.SlicingSpec]:
    if not cohort_key or not isinstance(cohort_key, str):
        raise ValueError(f"cohort_key must be a non-empty feature name, got {cohort_key!r}")
    return [tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[cohort_key])]


def _model_spec(name: str, label_key: str, signature_name: str, prediction_key: str,
                is_baseline: bool = False) -> tfma.ModelSpec:
    if not label_key or not isinstance(label_key, str):
        raise ValueError(f"label_key must be a non-empty feature name, got {label_key!r}")
    spec = tfma.ModelSpec(name=name, label_key=label_key, is_baseline=is_baseline)
    if signature_name:
        spec.signature_name = signature_name
    if prediction_key:
        spec.prediction_key = prediction_key
    return spec


def make_eval_config(label_key: str = F.LABEL, cohort_key: str = F.COHORT, with_baseline: bool = False,
                     *, thresholds: Optional[BlessingThresholds] = DEFAULT_THRESHOLDS,
                     signature_name: str = "serving_default", prediction_key: str = "",
                     baseline_prediction_key: Optional[str] = None, model_name: str = SINGLE_MODEL_NAME,
                     auc_num_thresholds: int = DEFAULT_AUC_NUM_THRESHOLDS,
                     calibration_buckets: int = DEFAULT_CALIBRATION_BUCKETS,
                     ci_method: str = "jackknife",
                     confidence_intervals: bool = False) -> tfma.EvalConfig:
    """The ``EvalConfig`` of a model Evaluator (candidate, optionally against a baseline).

    With ``with_baseline`` the config names its two ModelSpecs ``candidate`` and ``baseline``
    (``is_baseline=True``), which is what TFX's Evaluator expects for ``model`` and
    ``baseline_model`` and what TFMA writes into ``MetricKey.model_name``. Without, it has one
    ModelSpec named ``model_name`` (default ``""``: TFMA writes ``model_name: ""``).

    Args:
        label_key: the label feature (0/1).
        cohort_key: the activity cohort feature to slice by (besides the overall slice).
        with_baseline: add the baseline ModelSpec and, when ``thresholds`` has them, the change
            thresholds against it.
        thresholds: the blessing thresholds on AUC; None: no thresholds (always blessed).
        signature_name: the SavedModel signature TFMA calls (the serving signature that takes
            serialized tf.Examples).
        prediction_key: the model output (dict outputs) or, model-agnostic, the feature holding
            the candidate's prediction; "" when the model returns a single tensor.
        baseline_prediction_key: the baseline's; None: same as ``prediction_key``.
        model_name: the ModelSpec name without a baseline.
        auc_num_thresholds: thresholds of TFMA's AUC approximation.
        calibration_buckets: buckets of the calibration plot over [0, 1].
        ci_method: ``jackknife`` (TFMA's default: delete-d jackknife over 20 random partitions)
            or ``poisson_bootstrap`` (20 Poisson bootstrap resamples).
        confidence_intervals: whether TFMA computes confidence intervals (``ci_method``); off
            by default, see the module docstring.

    Returns:
        The EvalConfig.

    Raises:
        ValueError: on an empty key, a bad count or an unknown ``ci_method``.
    """
    if thresholds is not None and not isinstance(thresholds, BlessingThresholds):
        raise TypeError(f"thresholds must be a BlessingThresholds or None, got {thresholds!r}")
    if with_baseline:
        specs = [
            _model_spec(CANDIDATE_MODEL_NAME, label_key, signature_name, prediction_key),
            _model_spec(BASELINE_MODEL_NAME, label_key, signature_name,
                        prediction_key if baseline_prediction_key is None else baseline_prediction_key,
                        is_baseline=True),
        ]
    else:
        specs = [_model_spec(model_name, label_key, signature_name, prediction_key)]
    auc_threshold = thresholds.to_metric_threshold(with_baseline) if thresholds is not None else None
    return tfma.EvalConfig(model_specs=specs, slicing_specs=_slicing_specs(cohort_key),
                           metrics_specs=_metrics_specs(auc_num_thresholds, calibration_buckets, auc_threshold),
                           options=_options(ci_method, confidence_intervals))


def make_oracle_eval_config(label_key: str = F.LABEL, cohort_key: str = F.COHORT,
                            prediction_key: str = F.ORACLE_PROB, *,
                            auc_num_thresholds: int = DEFAULT_AUC_NUM_THRESHOLDS,
                            calibration_buckets: int = DEFAULT_CALIBRATION_BUCKETS,
                            ci_method: str = "jackknife",
                            confidence_intervals: bool = False) -> tfma.EvalConfig:
    """The model-agnostic ``EvalConfig`` that scores a prediction stored in the examples.

    Used for synthetic data, whose examples carry the best possible prediction (``oracle_prob``).
    No model is loaded; TFMA writes ``model_name: ""``. No blessing thresholds.

    Args:
        label_key: the label feature (0/1).
        cohort_key: the activity cohort feature to slice by.
        prediction_key: the feature holding the predicted probability.
        auc_num_thresholds: thresholds of TFMA's AUC approximation.
        calibration_buckets: buckets of the calibration plot.
        ci_method: ``jackknife`` or ``poisson_bootstrap``.
        confidence_intervals: whether TFMA computes confidence intervals (off by default).

    Returns:
        The EvalConfig (run it with ``tfma.run_model_analysis(eval_shared_model=None, ...)``).
    """
    if not prediction_key or not isinstance(prediction_key, str):
        raise ValueError(f"prediction_key must be a non-empty feature name, got {prediction_key!r}")
    spec = tfma.ModelSpec(label_key=label_key, prediction_key=prediction_key)
    if not label_key or not isinstance(label_key, str):
        raise ValueError(f"label_key must be a non-empty feature name, got {label_key!r}")
    return tfma.EvalConfig(model_specs=[spec], slicing_specs=_slicing_specs(cohort_key),
                           metrics_specs=_metrics_specs(auc_num_thresholds, calibration_buckets, None),
                           options=_options(ci_method, confidence_intervals))


def describe_ci_method(eval_config: tfma.EvalConfig) -> str:
    """A sentence saying how TFMA computed the confidence intervals of ``eval_config``'s run."""
    if not eval_config.options.compute_confidence_intervals.value:
        return "Confidence intervals were not computed."
    method = eval_config.options.confidence_intervals.method
    if method == tfma.ConfidenceIntervalOptions.POISSON_BOOTSTRAP:
        how = "20 Poisson bootstrap resamples"
    else:  # TFMA turns an unset method into JACKKNIFE
        how = "a delete-d jackknife over 20 random partitions of the examples"
    return (f"95% confidence intervals by TFMA from {how}: mean of the resampled values "
            f"± t(0.975, 19 dof) × standard error.")
