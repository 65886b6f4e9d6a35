"""Custom TFMA metrics used by :mod:`report.eval_config`.

``LogLoss`` replaces ``tfma.metrics.BinaryCrossEntropy``: in TFMA 0.47.1 that metric's combiner
merges accumulators as ``result = next(iter(accs)); for acc in accs: result.merge(acc)``, so the
first accumulator of every merge is counted twice and the reported value depends on how Beam
bundled the examples (seen here: 0.566 reported vs 0.525 exact on 1,580 examples), and its
jackknife intervals inherit the error. ``LogLoss`` computes the same quantity, the mean of
-[y log p + (1 - y) log(1 - p)] (natural log, example-weighted when weights are on), with
predictions clipped to [eps, 1 - eps] (eps = 1e-7, as Keras does) so a hard 0/1 prediction gives
a large finite loss instead of inf. TFX's Evaluator finds it through
``MetricConfig(class_name="LogLoss", module="report.tfma_metrics")``.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

LOGLOSS_NAME = "binary_crossentropy"
DEFAULT_EPSILON = 1e-7


class LogLoss(metric_types.Metric):
    """Binary log loss (cross-entropy) of a probability prediction against a 0/1 label."""

    def __init__(self, name: str = LOGLOSS_NAME, epsilon: float = DEFAULT_EPSILON):
        """Initializes the metric.

        Args:
            name: the metric name written into TFMA's metric keys.
            epsilon: predictions are clipped to [epsilon, 1 - epsilon].
        """
        if not 0.0 < epsilon < 0.5:
            raise ValueError(f"epsilon must lie in (0, 0.5), got {epsilon!r}")
        super().__init__(metric_util.merge_per_key_computations(_log_loss), name=name, epsilon=epsilon)


metric_types.register_metric(LogLoss)


def _log_loss(name: str = LOGLOSS_NAME, epsilon: float = DEFAULT_EPSILON,
              eval_config: Optional[config_pb2.EvalConfig] = None, model_name: str = "",
              output_name: str = "", sub_key: Optional[metric_types.SubKey] = None,
              aggregation_type: Optional[metric_types.AggregationType] = None,
              class_weights: Optional[Dict[int, float]] = None,
              example_weighted: bool = False) -> metric_types.MetricComputations:
    key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                 sub_key=sub_key, example_weighted=example_weighted)
    return [metric_types.MetricComputation(
        keys=[key], preprocessors=None,
        combiner=_LogLossCombiner(key, eval_config, aggregation_type, class_weights, example_weighted,
                                  epsilon))]


class _LogLossAccumulator:
    __slots__ = ("total_loss", "total_weight")

    def __init__(self) -> None:
        self.total_loss = 0.0
        self.total_weight = 0.0


class _LogLossCombiner(beam.CombineFn):
    """Sums weighted per-example losses and weights; every accumulator is merged exactly once."""

    def __init__(self, key: metric_types.MetricKey, eval_config: Optional[config_pb2.EvalConfig],
                 aggregation_type: Optional[metric_types.AggregationType],
                 class_weights: Optional[Dict[int, float]], example_weighted: bool, epsilon: float):
        self._key = key
        self._eval_config = eval_config
        self._aggregation_type = aggregation_type
        self._class_weights = class_weights
        self._example_weighted = example_weighted
        self._epsilon = epsilon

    def create_accumulator(self) -> _LogLossAccumulator:
        return _LogLossAccumulator()

    def add_input(self, accumulator: _LogLossAccumulator,
                  element: metric_types.StandardMetricInputs) -> _LogLossAccumulator:
        for label, prediction, weight in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=self._key.model_name,
                output_name=self._key.output_name, sub_key=self._key.sub_key,
                aggregation_type=self._aggregation_type, class_weights=self._class_weights,
                example_weighted=self._example_weighted, flatten=False):
            y = np.asarray(label, dtype=np.float64)
            p = np.clip(np.asarray(prediction, dtype=np.float64), self._epsilon, 1.0 - self._epsilon)
            loss = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
            w = float(metric_util.safe_to_scalar(weight))
            accumulator.total_loss += float(np.mean(loss)) * w
            accumulator.total_weight += w
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_LogLossAccumulator]) -> _LogLossAccumulator:
        result = _LogLossAccumulator()
        for accumulator in accumulators:
            result.total_loss += accumulator.total_loss
            result.total_weight += accumulator.total_weight
        return result

    def extract_output(self, accumulator: _LogLossAccumulator) -> metric_types.MetricsDict:
        value = accumulator.total_loss / accumulator.total_weight if accumulator.total_weight else float("nan")
        return {self._key: value}
