"""benchmarks.ranker_load's engines count what the server answered, request by request: a
server that answers 200, a chunked 404 and a closing 503 in turn gives exact counts."""
from __future__ import annotations

import itertools
import threading

import pytest

from benchmarks.ranker_load import run_load
from serving.http_server import serve_asgi


def rotating_server():
    """An ASGI app answering 200 (sized), 404 (chunked) and 503 (connection: close) in turn."""
    turn, lock = itertools.count(), threading.Lock()

    async def app(scope, receive, send):
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        with lock:
            i = next(turn) % 3
        if i == 0:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
        elif i == 1:  # no length: uvicorn sends it chunked
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not ", "more_body": True})
            await send({"type": "http.response.body", "body": b"found"})
        else:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-length", b"4"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": b"busy"})
    return app


@pytest.mark.parametrize("engine", ["asyncio", "threads"])
def test_each_answer_is_counted_once_by_its_class(engine):
    handle = serve_asgi(rotating_server())
    try:
        row = run_load(handle.url, b"{}", clients=10, seconds=60, requests_per_client=6,
                       engine=engine)
    finally:
        handle.stop()
    assert row["engine"] == engine and row["requests"] == 60
    assert (row["ok"], row["status_4xx"], row["status_5xx"]) == (20, 20, 20), row
    assert row["resets"] == 0 and row["timeouts"] == 0, row


def test_a_refused_port_counts_resets_not_answers():
    handle = serve_asgi(rotating_server())
    url = handle.url
    handle.stop()  # nothing listens there now
    row = run_load(url, b"{}", clients=2, seconds=30, requests_per_client=3)
    assert row["resets"] == 6 and row["ok"] == 0, row


def test_an_unknown_engine_is_refused_by_name():
    with pytest.raises(ValueError, match="engine 'procs' is unknown"):
        run_load("http://127.0.0.1:1", b"{}", engine="procs")
