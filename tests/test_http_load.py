"""The serving benchmark's lean HTTP/1.1 load generator (benchmarks/http_load.py)."""
from __future__ import annotations

import io
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from benchmarks import http_load
from benchmarks.load_client import CLIENT_SCRIPT


def _answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n" % status + extra
            + b"content-length: %d\r\n\r\n" % len(body) + body)


def test_build_request_is_a_whole_post():
    req = http_load.build_request("h", 80, "/v1/rank", b'{"a": 1}')
    assert req == (b"POST /v1/rank HTTP/1.1\r\nHost: h:80\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 8\r\n\r\n{\"a\": 1}")


def test_two_answers_on_one_connection_are_read_in_order():
    stream = io.BufferedReader(io.BytesIO(
        _answer(200, b'{"x": 1}', b"Server-Timing: total;dur=1.5\r\n") + _answer(503, b"no")))
    status, headers, body = http_load.read_response(stream)
    assert (status, body, headers[b"server-timing"]) == (200, b'{"x": 1}', b"total;dur=1.5")
    status, headers, body = http_load.read_response(stream)
    assert (status, body) == (503, b"no")
    with pytest.raises(ConnectionError):
        http_load.read_response(stream)


def test_an_answer_arriving_in_pieces_is_read_whole():
    a, b = socket.socketpair()
    data = _answer(200, b"y" * 5000)

    def trickle():
        for i in range(0, len(data), 777):
            a.sendall(data[i:i + 777])
            time.sleep(0.002)

    t = threading.Thread(target=trickle)
    t.start()
    status, _, body = http_load.read_response(b.makefile("rb"))
    t.join()
    a.close()
    b.close()
    assert (status, body) == (200, b"y" * 5000)


@pytest.mark.parametrize("raw, error", [
    (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", ConnectionError),
    (b"HTTP/1.1 200 OK\r\ncontent-type: x\r\n", ConnectionError),
    (b"HTTP/1.1 200 OK\r\n\r\n{}", ValueError),               # no Content-Length
    (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", ValueError),
    (b"SMTP ready\r\n\r\n", ValueError),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", ValueError),
])
def test_broken_answers_are_errors(raw, error):
    with pytest.raises(error):
        http_load.read_response(io.BufferedReader(io.BytesIO(raw)))


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def _serve(status: int):
    """A keep-alive server answering every request with ``status`` and a numbered timing."""
    seen = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                length = 0
                while True:
                    h = self.rfile.readline()
                    if h in (b"\r\n", b""):
                        break
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":")[1])
                body = self.rfile.read(length)
                seen.append((line, body))
                n = len(seen)
                self.wfile.write(_answer(status, b'{"n": %d}' % n,
                                         b"server-timing: total;dur=%d\r\n" % n))

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def test_run_load_counts_requests_and_keeps_each_timing_with_its_latency():
    server, seen = _serve(200)
    try:
        out = http_load.run_load("127.0.0.1", server.server_address[1], b'{"q": 1}',
                                 max_requests=7, max_seconds=30, warmup=2, concurrency=1)
    finally:
        server.shutdown()
        server.server_close()
    assert len(out["latencies_ms"]) == 7
    # one connection: answers 1-2 were the warm-up, 3..9 the timed ones, in order
    assert out["server_timing"] == [f"total;dur={n}" for n in range(3, 10)]
    assert [body for _, body in seen] == [b'{"q": 1}'] * 9
    assert all(line.startswith(b"POST /v1/rank HTTP/1.1") for line, _ in seen)


def _script(tmp_path, status: int, requests: int, concurrency: int):
    """Runs the load generator as the bench does, against a server answering ``status``."""
    server, _ = _serve(status)
    body = tmp_path / "body.json"
    body.write_bytes(b"{}")
    try:
        return subprocess.run([sys.executable, CLIENT_SCRIPT, "127.0.0.1",
                               str(server.server_address[1]), str(body), str(requests), "10", "1",
                               str(concurrency)], capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()


def test_the_script_exits_with_the_services_error(tmp_path):
    proc = _script(tmp_path, 503, requests=5, concurrency=2)
    assert proc.returncode != 0
    assert "ranker service answered 503" in proc.stderr


def test_the_script_prints_one_json_line(tmp_path):
    proc = _script(tmp_path, 200, requests=12, concurrency=3)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip())
    assert len(out["latencies_ms"]) == len(out["server_timing"]) == 12
    assert out["elapsed_s"] > 0
