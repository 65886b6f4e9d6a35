"""The serving benchmark's load generator: a stdlib-only client run in its own interpreter.

``python -c _CLIENT host port body_path max_requests max_seconds warmup concurrency`` starts
``concurrency`` threads, each with its own keep-alive ``http.client`` connection, that share a
budget of ``max_requests`` timed ``POST /v1/rank`` requests (after ``warmup`` untimed ones each)
for at most ``max_seconds``; it prints ``{"latencies_ms": [...], "elapsed_s": ...}`` as one JSON
line, or exits non-zero with the service's error. :func:`_percentiles` summarizes the latencies.

Used by :func:`benchmarks.serve_bench.run_serve_bench`.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

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
lat, errors, lock = [], [], threading.Lock()
budget = [int(max_requests)]
def worker():
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for _ in range(int(warmup)):
            once(conn)
        start_evt.wait()
        mine = []
        while time.perf_counter() < deadline[0]:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            t0 = time.perf_counter()
            once(conn)
            mine.append((time.perf_counter() - t0) * 1000.0)
        with lock:
            lat.extend(mine)
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
print(json.dumps({"latencies_ms": lat, "elapsed_s": elapsed}))
"""


def _percentiles(lat_ms: Sequence[float]) -> Dict[str, float]:
    arr = np.asarray(lat_ms, dtype=np.float64)
    return {f"p{q}_ms": float(np.percentile(arr, q)) for q in (50, 95, 99)}
