"""The serving benchmark's load generator and the summaries of what it measured.

:data:`CLIENT_SCRIPT` is the load generator (:mod:`benchmarks.http_load`), run with
``python CLIENT_SCRIPT host port body_path max_requests max_seconds warmup concurrency`` in its own
interpreter; it prints ``{"latencies_ms": [...], "server_timing": [...], "elapsed_s": ...}``.
:func:`_percentiles` summarizes the latencies, :func:`_timing_split` the ``Server-Timing`` headers.

Used by :func:`benchmarks.serve_bench.run_serve_bench`.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np

from serving.server_timing import parse_server_timing

CLIENT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "http_load.py")
"""The load generator, a stdlib-only script (:mod:`benchmarks.http_load`)."""


def _percentiles(lat_ms: Sequence[float]) -> Dict[str, float]:
    arr = np.asarray(lat_ms, dtype=np.float64)
    return {f"p{q}_ms": float(np.percentile(arr, q)) for q in (50, 95, 99)}


def _timing_split(lat_ms: Sequence[float], headers: Sequence[Optional[str]]) -> Dict[str, float]:
    """Medians of where the requests' time went, from their ``Server-Timing`` headers.

    Returns (each only when every request's header has the metrics it needs):

    * ``predict_p50_ms``: the Predict round trip (model server, both gRPC legs);
    * ``queue_p50_ms``: waiting for the Predict in flight;
    * ``server_p50_ms``: the ranker's total (body read to answer encoded);
    * ``outside_predict_p50_ms``: median over requests of ``latency - queue - predict``: the
      client, HTTP and the ranker's own work, everything but the model server.

    Raises:
        ValueError: ``lat_ms`` and ``headers`` of different lengths.
    """
    if len(lat_ms) != len(headers):
        raise ValueError(f"{len(lat_ms)} latencies but {len(headers)} Server-Timing headers")
    parsed = [parse_server_timing(h) for h in headers]
    out: Dict[str, float] = {}
    for name in ("predict", "queue", "server"):
        metric = "total" if name == "server" else name
        values = [p.get(metric) for p in parsed]
        if values and all(v is not None for v in values):
            out[f"{name}_p50_ms"] = float(np.median(values))
    if parsed and all("predict" in p and "queue" in p for p in parsed):
        out["outside_predict_p50_ms"] = float(np.median(
            [lat - p["predict"] - p["queue"] for lat, p in zip(lat_ms, parsed)]))
    return out
