"""serving/server_timing.py and the benchmark's split of it: header text and medians by hand."""
from __future__ import annotations

import time

import pytest

from benchmarks.load_client import _timing_split
from serving.server_timing import RankTiming, parse_server_timing


def test_header_lists_measured_metrics_in_ms_in_a_fixed_order():
    timing = RankTiming(predict_s=0.5, prepare_s=0.0012)
    assert timing.header_value() == b"prepare;dur=1.200, predict;dur=500.000"
    assert RankTiming().header_value() == b""
    assert RankTiming(queue_s=-1e-9).header_value() == b"queue;dur=0.000"  # clock jitter


def test_finish_counts_total_from_the_start():
    timing = RankTiming(started_at=time.perf_counter() - 0.25, predict_s=0.1)
    header = parse_server_timing(timing.finish().decode())
    assert 250.0 <= header["total"] < 250.0 + 5000.0 and header["predict"] == 100.0
    assert timing.total_s == pytest.approx(header["total"] / 1000.0, abs=1e-6)


def test_parse_reads_durations_and_skips_what_has_none():
    value = ('prepare;dur=1.5, cache;desc="hit", predict;desc=x;dur=2, total;dur=abc, '
             'Total;dur="9", ;dur=4, queue;dur=0.25;dur=7')
    assert parse_server_timing(value) == {"prepare": 1.5, "predict": 2.0, "total": 9.0,
                                          "queue": 0.25}
    assert parse_server_timing(None) == {} and parse_server_timing("") == {}
    round_trip = RankTiming(0.0, 0.001, 0.002, 0.003, 0.004).header_value().decode()
    assert parse_server_timing(round_trip) == {"prepare": 1.0, "queue": 2.0, "predict": 3.0,
                                               "total": 4.0}


def test_timing_split_medians_worked_by_hand():
    lat = [10.0, 20.0, 30.0]
    headers = ["queue;dur=1, predict;dur=2, total;dur=5",
               "queue;dur=1, predict;dur=4, total;dur=6",
               "queue;dur=1, predict;dur=6, total;dur=7"]
    # outside = latency - queue - predict: 7, 15, 23
    assert _timing_split(lat, headers) == {"predict_p50_ms": 4.0, "queue_p50_ms": 1.0,
                                           "server_p50_ms": 6.0, "outside_predict_p50_ms": 15.0}
    # a ranker that does not batch: total only; a missing header: nothing
    assert _timing_split(lat, ["total;dur=3"] * 3) == {"server_p50_ms": 3.0}
    assert _timing_split(lat, headers[:2] + [None]) == {}
    with pytest.raises(ValueError, match="3 latencies but 2"):
        _timing_split(lat, headers[:2])
