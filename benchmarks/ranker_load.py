"""Bounded load on a running ranker: N concurrent keep-alive clients, counting resets and 5xx.

``run_load(url, body, clients=200, seconds=10)`` starts ``clients`` clients; each opens a
keep-alive connection and POSTs ``body`` to ``/v1/rank`` until ``seconds`` pass or it has sent
``requests_per_client`` requests (whichever comes first; both bound the run). A connection that
is refused, reset or closed mid-answer counts as a reset (the client reconnects and goes on).

Two engines drive the same closed loop: ``asyncio`` (the default: one event loop, raw HTTP/1.1
on asyncio streams, uvloop when installed) and ``threads`` (one ``http.client`` thread per
client). On a machine that the ranker shares with its load, the engine's own CPU is taken from
the ranker: 200 Python threads cost far more of it than one event loop, so ``asyncio`` measures
the ranker rather than the load generator. It reports::

    clients, engine, requests, ok (200), status_4xx, status_5xx, resets, timeouts, p50_ms,
    p99_ms, max_ms, qps, elapsed_s

Run it against ``limaml serve``::

    python -m benchmarks.ranker_load --url http://127.0.0.1:8080 --body request.json \\
        [--clients 200] [--seconds 10] [--token-file F] [--engine asyncio|threads]

A script, never a timed test: the tests call ``run_load`` on a small bounded load and assert
only that there are no resets and no 5xx.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

import numpy as np

ENGINES = ("asyncio", "threads")


def run_load(url: str, body: bytes, clients: int = 200, seconds: float = 10.0,
             requests_per_client: Optional[int] = None, timeout_s: float = 30.0,
             token: Optional[str] = None, path: str = "/v1/rank",
             engine: str = "asyncio") -> Dict[str, Any]:
    """Drives the ranker with ``clients`` concurrent keep-alive clients (bounded time/count).

    Args:
        url: base URL of the ranker, ``http://host:port``.
        body: the JSON body every request sends.
        clients: concurrent clients (one connection each).
        seconds: most seconds of load.
        requests_per_client: most requests per client (None: until ``seconds``).
        timeout_s: socket timeout of one request (exceeded: counted as a timeout).
        token: bearer token to send.
        path: the request path.
        engine: ``"asyncio"`` or ``"threads"`` (see the module doc).

    Returns:
        The figures (see the module doc).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is unknown; use one of {ENGINES}")
    if engine == "asyncio":
        return _run_load_asyncio(url, body, clients, seconds, requests_per_client, timeout_s,
                                 token, path)
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
    return _figures(clients, "threads", counts, lat, elapsed)


def _figures(clients: int, engine: str, counts: Dict[str, int], lat: List[float],
             elapsed: float) -> Dict[str, Any]:
    arr = np.asarray(lat) if lat else np.asarray([np.nan])
    return {"clients": clients, "engine": engine, **counts,
            "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "max_ms": float(np.max(arr)), "qps": counts["ok"] / max(elapsed, 1e-9),
            "elapsed_s": elapsed}


async def _read_response(reader: asyncio.StreamReader) -> tuple:
    """Reads one HTTP/1.1 response; returns ``(status, server_closes)``."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            fields[name.strip().lower()] = value.strip().lower()
    if "content-length" in fields:
        await reader.readexactly(int(fields["content-length"]))
    elif fields.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:  # no length: the body runs to the end of the connection
        await reader.read()
        return status, True
    return status, fields.get("connection") == "close"


def _run_load_asyncio(url: str, body: bytes, clients: int, seconds: float,
                      requests_per_client: Optional[int], timeout_s: float,
                      token: Optional[str], path: str) -> Dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + (f"Authorization: Bearer {token}\r\n" if token else "")
            + "\r\n").encode("latin-1")
    request = head + body
    counts = {"requests": 0, "ok": 0, "status_4xx": 0, "status_5xx": 0, "resets": 0,
              "timeouts": 0}
    lat: List[float] = []

    async def client(deadline: float) -> None:
        reader = writer = None
        sent = 0
        while time.perf_counter() < deadline and (
                requests_per_client is None or sent < requests_per_client):
            sent += 1
            counts["requests"] += 1
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(host, port), timeout_s)
                    sock = writer.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    t0 = time.perf_counter()
                writer.write(request)
                status, closes = await asyncio.wait_for(_read_response(reader), timeout_s)
            except asyncio.TimeoutError:
                counts["timeouts"] += 1
                closes, status = True, None
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    OSError, ValueError, IndexError):
                counts["resets"] += 1
                closes, status = True, None
            if status is not None:
                lat.append((time.perf_counter() - t0) * 1000.0)
                if status == 200:
                    counts["ok"] += 1
                elif status >= 500:
                    counts["status_5xx"] += 1
                elif status >= 400:
                    counts["status_4xx"] += 1
            if closes and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def main() -> float:
        t_start = time.perf_counter()
        await asyncio.gather(*(client(t_start + seconds) for _ in range(clients)))
        return time.perf_counter() - t_start

    try:
        import uvloop

        elapsed = uvloop.run(main())
    except ImportError:
        elapsed = asyncio.run(main())
    return _figures(clients, "asyncio", counts, lat, elapsed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one bounded load and prints its figures as one JSON row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="ranker base URL, http://host:port")
    parser.add_argument("--body", required=True, help="file holding the JSON request body")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests-per-client", type=int)
    parser.add_argument("--token-file", help="bearer token file")
    parser.add_argument("--engine", choices=ENGINES, default="asyncio",
                        help="load generator: one event loop (default) or one thread per client")
    args = parser.parse_args(argv)
    with open(args.body, "rb") as fh:
        body = fh.read()
    token = open(args.token_file, encoding="utf-8").read().strip() if args.token_file else None
    row = run_load(args.url, body, clients=args.clients, seconds=args.seconds,
                   requests_per_client=args.requests_per_client, token=token,
                   engine=args.engine)
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
