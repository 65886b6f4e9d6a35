"""Bounded load on a running ranker: N concurrent keep-alive clients, counting resets and 5xx.

``run_load(url, body, clients=200, seconds=10)`` starts ``clients`` threads; each opens a
keep-alive connection and POSTs ``body`` to ``/v1/rank`` until ``seconds`` pass or it has sent
``requests_per_client`` requests (whichever comes first; both bound the run). A connection that
is refused, reset or closed mid-answer counts as a reset (the client reconnects and goes on).
It reports::

    clients, requests, ok (200), status_4xx, status_5xx, resets, timeouts, p50_ms, p99_ms,
    max_ms, qps, elapsed_s

Run it against ``limaml serve``::

    python -m benchmarks.ranker_load --url http://127.0.0.1:8080 --body request.json \\
        [--clients 200] [--seconds 10] [--token-file F]

A script, never a timed test: the tests call ``run_load`` on a small bounded load and assert
only that there are no resets and no 5xx.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

import numpy as np


def run_load(url: str, body: bytes, clients: int = 200, seconds: float = 10.0,
             requests_per_client: Optional[int] = None, timeout_s: float = 30.0,
             token: Optional[str] = None, path: str = "/v1/rank") -> Dict[str, Any]:
    """Drives the ranker with ``clients`` concurrent keep-alive clients (bounded time/count).

    Args:
        url: base URL of the ranker, ``http://host:port``.
        body: the JSON body every request sends.
        clients: concurrent clients (threads, one connection each).
        seconds: most seconds of load.
        requests_per_client: most requests per client (None: until ``seconds``).
        timeout_s: socket timeout of one request (exceeded: counted as a timeout).
        token: bearer token to send.
        path: the request path.

    Returns:
        The figures (see the module doc).
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    lock = threading.Lock()
    lat: List[float] = []
    counts = {"requests": 0, "ok": 0, "status_4xx": 0, "status_5xx": 0, "resets": 0,
              "timeouts": 0}
    start_evt = threading.Event()
    deadline_box = [0.0]

    def client() -> None:
        mine: List[float] = []
        local = dict.fromkeys(counts, 0)
        conn: Optional[http.client.HTTPConnection] = None
        start_evt.wait()
        sent = 0
        while time.perf_counter() < deadline_box[0] and (
                requests_per_client is None or sent < requests_per_client):
            sent += 1
            local["requests"] += 1
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
            except socket.timeout:
                local["timeouts"] += 1
                conn.close()
                conn = None
                continue
            except (ConnectionError, http.client.HTTPException, OSError):
                local["resets"] += 1
                conn.close()
                conn = None
                continue
            mine.append((time.perf_counter() - t0) * 1000.0)
            if resp.status == 200:
                local["ok"] += 1
            elif resp.status >= 500:
                local["status_5xx"] += 1
            elif resp.status >= 400:
                local["status_4xx"] += 1
            if resp.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
        with lock:
            lat.extend(mine)
            for k, v in local.items():
                counts[k] += v

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    deadline_box[0] = t_start + seconds
    start_evt.set()
    for t in threads:
        t.join(timeout=seconds + timeout_s + 30)
    elapsed = time.perf_counter() - t_start
    arr = np.asarray(lat) if lat else np.asarray([np.nan])
    return {"clients": clients, **counts,
            "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "max_ms": float(np.max(arr)), "qps": counts["ok"] / max(elapsed, 1e-9),
            "elapsed_s": elapsed}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one bounded load and prints its figures as one JSON row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="ranker base URL, http://host:port")
    parser.add_argument("--body", required=True, help="file holding the JSON request body")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests-per-client", type=int)
    parser.add_argument("--token-file", help="bearer token file")
    args = parser.parse_args(argv)
    with open(args.body, "rb") as fh:
        body = fh.read()
    token = open(args.token_file, encoding="utf-8").read().strip() if args.token_file else None
    row = run_load(args.url, body, clients=args.clients, seconds=args.seconds,
                   requests_per_client=args.requests_per_client, token=token)
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
