"""The serving benchmark's load generator: a stdlib-only client run in its own interpreter.

``python -c _CLIENT host port body_path max_requests max_seconds warmup concurrency`` starts
``concurrency`` threads, each with its own keep-alive ``http.client`` connection, that share a
budget of ``max_requests`` timed ``POST /v1/rank`` requests (after ``warmup`` untimed ones each)
for at most ``max_seconds``; it prints ``{"latencies_ms": [...], "server_timing": [...],
"elapsed_s": ...}`` as one JSON line (``server_timing``: each timed answer's ``Server-Timing``
header, in the order of ``latencies_ms``), or exits non-zero with the service's error.
:func:`_percentiles` summarizes the latencies, :func:`_timing_split` the headers.

Used by :func:`benchmarks.serve_bench.run_serve_bench`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from serving.server_timing import parse_server_timing

# The load generator: runs in its own interpreter, imports only the stdlib. `concurrency` threads,
# each with its own keep-alive connection, share the request budget.
_CLIENT = r"""
import http.client, json, sys, threading, time
host, port, body_path, max_requests, max_seconds, warmup, concurrency = sys.argv[1:8]
body = open(body_path, "rb").read()
headers = {"Content-Type": "application/json"}
def once(conn):
    conn.request("POST", "/v1/rank", body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise SystemExit("ranker service answered %d: %s" % (resp.status, data[:500]))
    return resp.getheader("server-timing")
lat, timings, errors, lock = [], [], [], threading.Lock()
budget = [int(max_requests)]
def worker():
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for _ in range(int(warmup)):
            once(conn)
        start_evt.wait()
        mine, mine_timing = [], []
        while time.perf_counter() < deadline[0]:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            t0 = time.perf_counter()
            header = once(conn)
            mine.append((time.perf_counter() - t0) * 1000.0)
            mine_timing.append(header)
        with lock:
            lat.extend(mine)
            timings.extend(mine_timing)
    except BaseException as exc:
        errors.append(str(exc))
    finally:
        conn.close()
start_evt = threading.Event()
deadline = [0.0]
threads = [threading.Thread(target=worker) for _ in range(int(concurrency))]
for t in threads:
    t.start()
time.sleep(0.05 * int(warmup))
start = time.perf_counter()
deadline[0] = start + float(max_seconds)
start_evt.set()
for t in threads:
    t.join()
elapsed = time.perf_counter() - start
if errors:
    raise SystemExit(errors[0])
print(json.dumps({"latencies_ms": lat, "server_timing": timings, "elapsed_s": elapsed}))
"""


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
