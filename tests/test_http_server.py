"""serving.http_server on both HTTP stacks: httptools on uvloop (the default) and h11 on asyncio
get the same limits: a head over ``max_header_bytes`` is answered 400, a head that never ends is
dropped at ``header_timeout_s``, keep-alive connections carry several requests."""
from __future__ import annotations

import http.client
import socket
import time

import pytest

from serving.http_server import serve_asgi


async def echo_length(scope, receive, send):
    """Answers 200 with the request body's length as text."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    out = str(len(body)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


@pytest.fixture(params=["auto", "h11"])
def server(request):
    handle = serve_asgi(echo_length, max_header_bytes=2048, header_timeout_s=0.5, http=request.param)
    yield request.param, handle
    handle.stop()


def test_the_default_stack_is_httptools_on_uvloop(server):
    http, handle = server
    assert handle.stack == ("httptools/uvloop" if http == "auto" else "h11/asyncio")


def test_keep_alive_carries_several_requests_and_bodies_arrive_whole(server):
    _, handle = server
    conn = http.client.HTTPConnection(handle.host, handle.port, timeout=10)
    for n in (0, 5, 70_000):
        conn.request("POST", "/", body=b"x" * n)
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, str(n).encode())
    conn.close()


def test_a_head_over_the_limit_is_400_and_a_normal_one_still_200(server):
    _, handle = server
    conn = http.client.HTTPConnection(handle.host, handle.port, timeout=10)
    conn.request("POST", "/", body=b"ab", headers={"X-Pad": "p" * 4000})
    assert conn.getresponse().status == 400
    conn.close()
    conn = http.client.HTTPConnection(handle.host, handle.port, timeout=10)
    conn.request("POST", "/", body=b"ab", headers={"X-Pad": "p" * 1000})
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"2")
    conn.close()


def test_a_head_that_never_ends_is_dropped_at_the_deadline(server):
    _, handle = server
    slow = socket.create_connection((handle.host, handle.port))
    slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    slow.settimeout(10)
    t0 = time.monotonic()
    assert slow.recv(1024) == b""
    assert time.monotonic() - t0 < 5
    slow.close()


def test_an_unknown_stack_is_refused_by_name():
    with pytest.raises(ValueError, match="http 'h2' is unknown"):
        serve_asgi(echo_length, http="h2")


def _read_answer(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(rest) < length:
        rest += sock.recv(4096)
    return head.split(b" ")[1], rest[:length]


def test_a_head_whose_end_is_split_across_reads_does_not_count_against_the_next_one(server):
    """The head's CRLFCRLF split over two reads, a 1,500-byte body, then a 1,000-byte head on the
    same connection: both 200 (the next head must not inherit the first request's bytes)."""
    _, handle = server
    sock = socket.create_connection((handle.host, handle.port))
    sock.settimeout(10)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1500\r\n\r\n"
    sock.sendall(head[:-1])
    time.sleep(0.2)
    sock.sendall(head[-1:] + b"b" * 1500)
    assert _read_answer(sock) == (b"200", b"1500")
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 1000 + b"\r\nContent-Length: 2\r\n\r\nab")
    assert _read_answer(sock) == (b"200", b"2")
    sock.close()
