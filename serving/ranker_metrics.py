"""The ranker service's Prometheus metrics, served at ``GET /metrics`` (text format 0.0.4).

Counted per answer, on the event loop, after the answer is sent (plain integers: every
``observe`` runs on that one thread, so no locks; ~1 us per answer), and turned into Prometheus
metric families when scraped:

* ``limaml_ranker_requests_total{path, status}``: every HTTP answer (``path`` is one of the
  service's paths or ``other``, so unknown paths cannot grow the label set);
* ``limaml_ranker_rank_errors_total{code}``: failed ``/v1/rank`` requests by the answer's
  ``code`` (``bad_request``, ``model_unavailable``, ... as in :mod:`serving.ranker_service`);
* ``limaml_ranker_cold_start_total``, ``limaml_ranker_degraded_total``: answered rankings that
  used the cold-start embedding, or that the embedding store's trouble degraded;
* ``limaml_ranker_candidates_total``: candidates scored;
* ``limaml_ranker_rank_seconds`` and ``limaml_ranker_predict_seconds``: histograms of a ranking's
  ``Server-Timing`` ``total`` (body read to answer encoded) and of the round trip of the Predict
  that carried it (batching service only).

Read from the ranker at scrape time: ``limaml_ranker_served_version`` (the cached served model
version; absent before the first answer), ``limaml_ranker_pending_requests`` (requests in the
ranker, running or queued) and, for a multi-block model,
``limaml_ranker_embedding_fallbacks_total{fallback}`` (:mod:`serving.multi_block`).
"""
from __future__ import annotations

import bisect
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from serving.server_timing import RankTiming

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("ascii")
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
                     0.5, 1.0, 2.5)
"""Histogram bucket bounds (seconds): fine around a ranking's 2-10 ms, coarse up to seconds."""
OTHER_PATH = "other"


class _Histogram:
    """Observations counted per bucket (``le`` bounds, then +Inf) and summed."""

    def __init__(self, bounds: Tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative: List[Tuple[str, float]] = []
        total = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts):
            total += count
            cumulative.append((bound, float(total)))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


class RankerMetrics:
    """The service's metrics, in their own registry (several services in one process do not mix).

    Args:
        ranker: the service's :class:`~serving.ranker.Ranker` (read at scrape time).
        rank_path: the ranking path (its answers count as rankings).
        paths: the service's other paths; any path not named is counted as ``other``.
        pending: returns the number of requests in the ranker now.
    """

    def __init__(self, ranker: Any, rank_path: str, paths: Tuple[str, ...],
                 pending: Callable[[], int]) -> None:
        self._ranker = ranker
        self._pending = pending
        self._rank_path = rank_path
        self._paths = frozenset((rank_path, *paths))
        self._requests: Dict[Tuple[str, int], int] = {}
        self._errors: Dict[str, int] = {}
        self._cold = 0
        self._degraded = 0
        self._candidates = 0
        self._rank_s = _Histogram(LATENCY_BUCKETS_S)
        self._predict_s = _Histogram(LATENCY_BUCKETS_S)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def observe(self, path: str, status: int, body: Mapping[str, Any],
                timing: Optional[RankTiming] = None) -> None:
        """Counts one answer: its path and status; for the ranking path also its error code
        (any status but 200), or its cold start, degradation, candidates and timings. Call it
        from the event loop only.

        Args:
            path: the request's path.
            status: the HTTP status answered.
            body: the JSON answer.
            timing: a ranking's finished :class:`~serving.server_timing.RankTiming` (None: not
                timed, e.g. refused before the ranker).
        """
        key = (path if path in self._paths else OTHER_PATH, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        if path != self._rank_path:
            return
        if status != 200:
            code = str(body.get("code", "unknown"))
            self._errors[code] = self._errors.get(code, 0) + 1
            return
        if body.get("cold_start"):
            self._cold += 1
        if body.get("degraded"):
            self._degraded += 1
        self._candidates += len(body.get("scores", ()))
        if timing is not None:
            if timing.total_s is not None:
                self._rank_s.observe(timing.total_s)
            if timing.predict_s is not None:
                self._predict_s.observe(timing.predict_s)

    def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Any]:
        """The metric families (the registry's collector interface)."""
        requests = CounterMetricFamily("limaml_ranker_requests", "HTTP answers by path and status.",
                                       labels=["path", "status"])
        for (path, status), count in sorted(self._requests.items()):
            requests.add_metric([path, str(status)], float(count))
        yield requests
        errors = CounterMetricFamily("limaml_ranker_rank_errors",
                                     "Failed ranking requests by the answer's error code.",
                                     labels=["code"])
        for code, count in sorted(self._errors.items()):
            errors.add_metric([code], float(count))
        yield errors
        yield CounterMetricFamily("limaml_ranker_cold_start",
                                  "Rankings scored with the cold-start embedding.",
                                  value=float(self._cold))
        yield CounterMetricFamily("limaml_ranker_degraded",
                                  "Rankings degraded by the embedding store (down or slow).",
                                  value=float(self._degraded))
        yield CounterMetricFamily("limaml_ranker_candidates", "Candidates scored.",
                                  value=float(self._candidates))
        yield self._rank_s.family("limaml_ranker_rank_seconds",
                                  "A ranking's time in the ranker (Server-Timing total).")
        yield self._predict_s.family("limaml_ranker_predict_seconds",
                                     "Round trip of the Predict that carried a ranking.")
        version = self._ranker.cached_version
        if version is not None:
            yield GaugeMetricFamily("limaml_ranker_served_version",
                                    "The model version the ranker scores with (cached).",
                                    value=float(version))
        yield GaugeMetricFamily("limaml_ranker_pending_requests",
                                "Ranking requests in the ranker, running or queued.",
                                value=float(self._pending()))
        if self._ranker.multi_block:
            fallbacks = CounterMetricFamily(
                "limaml_ranker_embedding_fallbacks",
                "Candidates whose user x genre embedding fell back, by fallback.",
                labels=["fallback"])
            for name, count in sorted(self._ranker.fallback_counts.items()):
                fallbacks.add_metric([name], float(count))
            yield fallbacks


__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS_S", "RankerMetrics"]
