"""The serving benchmark's load generator: a lean keep-alive HTTP/1.1 client, stdlib only.

Run as a script in its own interpreter (it imports nothing but the standard library, so its
process stays small)::

    python benchmarks/http_load.py HOST PORT BODY_PATH MAX_REQUESTS MAX_SECONDS WARMUP CONCURRENCY

``CONCURRENCY`` threads, each with its own keep-alive connection, share a budget of
``MAX_REQUESTS`` timed ``POST /v1/rank`` requests (after ``WARMUP`` untimed ones each) for at
most ``MAX_SECONDS``; it prints ``{"latencies_ms": [...], "server_timing": [...],
"elapsed_s": ...}`` as one JSON line (``server_timing``: each timed answer's ``Server-Timing``
header, in the order of ``latencies_ms``), or exits non-zero with the service's error.

Why not ``http.client``: it parses every answer's headers with the ``email`` package, ~0.1 ms
of the client's own time per request here, which a latency benchmark would charge to the
service. Here a request is one prebuilt byte string and an answer is read with the buffered
reader's ``readline`` and ``read``, as a load tool such as ``wrk`` does in C; the status,
``Content-Length`` and the full body are still checked on every answer.
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple

MAX_HEAD_LINES = 100


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """One keep-alive ``POST`` of a JSON body, as bytes."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


def read_response(rfile: BinaryIO) -> Tuple[int, Dict[bytes, bytes], bytes]:
    """Reads one HTTP/1.1 answer with a ``Content-Length`` body.

    Returns:
        ``(status, headers, body)``; header names lower-cased.

    Raises:
        ConnectionError: the connection closed before a whole answer arrived.
        ValueError: a malformed status line or header, or no ``Content-Length``.
    """
    status_line = rfile.readline()
    if not status_line:
        raise ConnectionError("the service closed the connection")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"malformed status line {status_line[:200]!r}")
    headers: Dict[bytes, bytes] = {}
    for _ in range(MAX_HEAD_LINES):
        line = rfile.readline()
        if not line:
            raise ConnectionError("the service closed the connection inside the answer's head")
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError(f"malformed header line {line[:200]!r}")
        headers[name.strip().lower()] = value.strip()
    else:
        raise ValueError(f"answer head longer than {MAX_HEAD_LINES} lines")
    length = headers.get(b"content-length")
    if length is None or not length.isdigit():
        raise ValueError(f"answer without a Content-Length (got {length!r})")
    body = rfile.read(int(length))
    if len(body) != int(length):
        raise ConnectionError(f"the service closed the connection after {len(body)} of "
                              f"{int(length)} body bytes")
    return int(parts[1]), headers, body


class Connection:
    """One keep-alive connection sending the same request again and again."""

    def __init__(self, host: str, port: int, request: bytes, timeout_s: float = 30.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._rfile = self._sock.makefile("rb")
        self._request = request

    def once(self) -> Optional[str]:
        """Sends the request and reads its answer.

        Returns:
            The answer's ``Server-Timing`` header, or None.

        Raises:
            SystemExit: the service answered another status than 200 (with its body).
            ConnectionError, ValueError: as :func:`read_response`.
        """
        self._sock.sendall(self._request)
        status, headers, body = read_response(self._rfile)
        if status != 200:
            raise SystemExit(f"ranker service answered {status}: {body[:500]!r}")
        timing = headers.get(b"server-timing")
        return timing.decode("latin-1") if timing is not None else None

    def close(self) -> None:
        self._rfile.close()
        self._sock.close()


def run_load(host: str, port: int, body: bytes, max_requests: int, max_seconds: float,
             warmup: int, concurrency: int) -> Dict[str, object]:
    """The load (see the module doc); returns what the script prints."""
    request = build_request(host, port, "/v1/rank", body)
    lat: List[float] = []
    timings: List[Optional[str]] = []
    errors: List[str] = []
    lock = threading.Lock()
    budget = [int(max_requests)]
    start_evt = threading.Event()
    deadline = [0.0]

    def worker() -> None:
        conn = None
        try:
            conn = Connection(host, port, request)
            for _ in range(warmup):
                conn.once()
            start_evt.wait()
            mine: List[float] = []
            mine_timing: List[Optional[str]] = []
            while time.perf_counter() < deadline[0]:
                with lock:
                    if budget[0] <= 0:
                        break
                    budget[0] -= 1
                t0 = time.perf_counter()
                header = conn.once()
                mine.append((time.perf_counter() - t0) * 1000.0)
                mine_timing.append(header)
            with lock:
                lat.extend(mine)
                timings.extend(mine_timing)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(str(exc) or type(exc).__name__)
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(0.05 * warmup)
    start = time.perf_counter()
    deadline[0] = start + float(max_seconds)
    start_evt.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(errors[0])
    return {"latencies_ms": lat, "server_timing": timings, "elapsed_s": elapsed}


def main(argv: Sequence[str]) -> int:
    host, port, body_path, max_requests, max_seconds, warmup, concurrency = argv
    with open(body_path, "rb") as fh:
        body = fh.read()
    out = run_load(host, int(port), body, int(max_requests), float(max_seconds), int(warmup),
                   int(concurrency))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
