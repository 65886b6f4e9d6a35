"""serving/ranker_metrics.py: planted answers give hand-counted Prometheus samples, read back
with prometheus_client's own text parser."""
from __future__ import annotations

from typing import Dict

import numpy as np
import pytest

from serving.ranker import Ranker
from serving.ranker_metrics import RankerMetrics
from serving.server_timing import RankTiming

try:
    from serving_fixtures import parse_metrics
except ImportError:  # tests/ is a package
    from tests.serving_fixtures import parse_metrics


class _NoLookup:
    def lookup(self, user_ids, model_version):  # never called: nothing is ranked here
        raise AssertionError("no lookup expected")


def _samples(metrics: RankerMetrics) -> Dict[str, float]:
    return parse_metrics(metrics.render().decode("utf-8"))


@pytest.fixture()
def ranker():
    # A real ranker on an address nothing listens at: gRPC channels connect lazily, and the
    # metrics only read its served version and fallback counts.
    r = Ranker("127.0.0.1:9", "m", _NoLookup(), meta_blocks=("user", "user_x_genre"))
    yield r
    r.close()


def test_planted_answers_give_hand_counted_samples(ranker):
    pending = [3]
    m = RankerMetrics(ranker, "/v1/rank", ("/healthz", "/readyz"), lambda: pending[0])
    totals = [0.0005, 0.0007, 0.002, 0.03, 3.0]  # the first on a bucket bound: counted in it
    for i, total in enumerate(totals):
        body = {"scores": [0.5] * (i + 1), "cold_start": i in (1, 2), "degraded":
                "embedding store unavailable" if i == 2 else None}
        m.observe("/v1/rank", 200, body, RankTiming(total_s=total,
                                                    predict_s=total / 2 if i < 2 else None))
    m.observe("/v1/rank", 400, {"code": "bad_request"}, RankTiming(total_s=0.001))
    m.observe("/v1/rank", 503, {"code": "overloaded"})
    m.observe("/v1/rank", 503, {"code": "overloaded"})
    m.observe("/healthz", 200, {"status": "ok"})
    m.observe("/no/such/path", 404, {"code": "not_found"})
    m.observe("/also/unknown", 404, {"code": "not_found"})
    ranker.fallback_counts["genre_to_user"] = 7
    s = _samples(m)
    assert s['limaml_ranker_requests_total{path="/v1/rank",status="200"}'] == 5
    assert s['limaml_ranker_requests_total{path="/v1/rank",status="400"}'] == 1
    assert s['limaml_ranker_requests_total{path="/v1/rank",status="503"}'] == 2
    assert s['limaml_ranker_requests_total{path="/healthz",status="200"}'] == 1
    assert s['limaml_ranker_requests_total{path="other",status="404"}'] == 2  # bounded labels
    assert s['limaml_ranker_rank_errors_total{code="bad_request"}'] == 1
    assert s['limaml_ranker_rank_errors_total{code="overloaded"}'] == 2
    assert 'limaml_ranker_rank_errors_total{code="not_found"}' not in s  # not a ranking path
    assert s["limaml_ranker_cold_start_total"] == 2
    assert s["limaml_ranker_degraded_total"] == 1
    assert s["limaml_ranker_candidates_total"] == 1 + 2 + 3 + 4 + 5
    want = {"0.0005": 1, "0.001": 2, "0.002": 3, "0.003": 3, "0.025": 3, "0.05": 4, "2.5": 4,
            "+Inf": 5}
    for le, count in want.items():
        assert s[f'limaml_ranker_rank_seconds_bucket{{le="{le}"}}'] == count, le
    assert s["limaml_ranker_rank_seconds_count"] == 5
    assert s["limaml_ranker_rank_seconds_sum"] == pytest.approx(sum(totals), abs=1e-12)
    assert s["limaml_ranker_predict_seconds_count"] == 2
    assert s["limaml_ranker_predict_seconds_sum"] == pytest.approx(0.0006, abs=1e-12)
    assert s['limaml_ranker_predict_seconds_bucket{le="0.0005"}'] == 2  # 0.00025, 0.00035
    assert "limaml_ranker_served_version" not in s  # never asked
    assert s["limaml_ranker_pending_requests"] == 3
    pending[0] = 0
    assert _samples(m)["limaml_ranker_pending_requests"] == 0
    assert s['limaml_ranker_embedding_fallbacks_total{fallback="genre_to_user"}'] == 7
    assert s['limaml_ranker_embedding_fallbacks_total{fallback="user_to_cold"}'] == 0


def test_two_services_count_apart(ranker):
    a = RankerMetrics(ranker, "/v1/rank", (), lambda: 0)
    b = RankerMetrics(ranker, "/v1/rank", (), lambda: 0)
    a.observe("/v1/rank", 200, {"scores": np.zeros(4), "cold_start": False}, RankTiming())
    assert _samples(a)["limaml_ranker_candidates_total"] == 4
    assert _samples(b)["limaml_ranker_candidates_total"] == 0
