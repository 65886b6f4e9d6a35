"""The ranker's HTTP service under hostile input and load (issue 12, findings 6 and 7).

Real toy model behind the TF Serving stand-in over gRPC, the real embedding lookup over an
in-memory store, the service on uvicorn; a bounded load from ``benchmarks.ranker_load``.
"""
from __future__ import annotations

import http.client
import json
import socket
import time

import numpy as np
import pytest

from embeddings.record import COLD_START_USER, StoreLookup, VersionNotCommittedError
from serving import model_server
from serving.embedding_lookup import EmbeddingLookup
from serving.ranker import Ranker
from serving.ranker_service import build_arg_parser, start_ranker_service

try:
    from serving_fixtures import *  # noqa: F401,F403
    from serving_fixtures import EMBED_DIM, MODEL_NAME, make_candidates
except ImportError:  # pragma: no cover - run from the repo root
    from tests.serving_fixtures import *  # noqa: F401,F403
    from tests.serving_fixtures import EMBED_DIM, MODEL_NAME, make_candidates


class MemoryStore:
    """Committed versions in memory; ``fail`` makes every lookup raise (store down)."""

    def __init__(self, versions=("2",)) -> None:
        self.versions = set(versions)
        self.fail = False

    def __repr__(self) -> str:
        return "MemoryStore(projects/secret-project/instances/i/tables/secret_table)"

    def lookup(self, user_ids, model_version, timeout_s=None) -> StoreLookup:
        if self.fail:
            raise ConnectionError("bigtable.internal.example:443 refused")
        if str(model_version) not in self.versions:
            raise VersionNotCommittedError(
                f"model version {model_version!r} is not committed in /srv/run42/embeddings")
        ids = list(user_ids)
        found = np.array([u in ("alice", COLD_START_USER) for u in ids])
        emb = np.where(found[:, None], 0.5, 0.0).astype(np.float32) * np.ones((len(ids), EMBED_DIM))
        return StoreLookup(embeddings=emb.astype(np.float32), found=found)


@pytest.fixture()
def parts(toy_model_server):
    store = MemoryStore()
    lookup = EmbeddingLookup(store, embedding_dim=EMBED_DIM, cache_size=0, timeout_s=2.0)
    ranker = Ranker(toy_model_server.target, MODEL_NAME, lookup, timeout_s=5.0)
    yield store, lookup, ranker
    ranker.close()
    lookup.close()


def _call(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw), raw
    finally:
        conn.close()


GOOD = {"user_id": "alice", "candidates": make_candidates(3)}


def test_hostile_bodies_are_400_never_500(parts):
    _, _, ranker = parts
    with start_ranker_service(ranker) as svc:
        surrogate = b'{"user_id": "\\ud800x", "candidates": [{"item_id": "i", "genres": "A", ' \
                    b'"release_year": 1990}]}'
        item_surrogate = json.dumps(GOOD)[:-2].encode() + b', {"item_id": "\\udfff", ' \
                                                          b'"genres": "A", "release_year": 1}]}'
        deep = b"[" * 100_000 + b"]" * 100_000
        deep_obj = b'{"user_id": "a", "candidates": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        for body in (surrogate, item_surrogate, deep, deep_obj):
            status, answer, _ = _call(svc.port, "POST", "/v1/rank", body)
            assert status == 400, (body[:60], answer)
            assert answer["code"] == "bad_request"
        assert _call(svc.port, "POST", "/v1/rank", GOOD)[0] == 200


def test_slow_header_connections_are_dropped(parts):
    _, _, ranker = parts
    with start_ranker_service(ranker, header_timeout_s=0.5) as svc:
        idle = socket.create_connection(("127.0.0.1", svc.port))
        slow = socket.create_connection(("127.0.0.1", svc.port))
        slow.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        for sock in (idle, slow):
            sock.settimeout(10)
            t0 = time.monotonic()
            assert sock.recv(1024) == b"", "the server kept a connection without a request head"
            assert time.monotonic() - t0 < 9
            sock.close()
        assert _call(svc.port, "POST", "/v1/rank", GOOD)[0] == 200


def test_a_body_that_never_completes_gets_408_and_the_service_goes_on(parts):
    """Content-Length promises more than arrives: 408 after body_timeout_s, the connection
    closed; a body that arrives in pieces within the deadline is ranked."""
    _, _, ranker = parts
    with start_ranker_service(ranker, body_timeout_s=0.4) as svc:
        body = json.dumps(GOOD).encode()
        sock = socket.create_connection(("127.0.0.1", svc.port))
        sock.settimeout(10)
        sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        t0 = time.monotonic()
        answer = b""
        while b"body_timeout" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        waited = time.monotonic() - t0
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"not received within 0.4 s" in answer
        assert 0.3 < waited < 5
        slow = socket.create_connection(("127.0.0.1", svc.port))
        slow.settimeout(10)
        slow.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.1)
        slow.sendall(body[10:])
        reply = slow.recv(65536)
        slow.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert _call(svc.port, "POST", "/v1/rank", GOOD)[0] == 200


def test_readyz_needs_the_served_versions_embeddings(parts):
    store, _, ranker = parts
    with start_ranker_service(ranker) as svc:
        status, body, _ = _call(svc.port, "GET", "/readyz")
        assert (status, body) == (200, {"status": "ready", "model_version": "2"})
        store.versions = {"1"}  # the served version 2 has no embeddings (a push without MEG)
        status, body, raw = _call(svc.port, "GET", "/readyz")
        assert status == 503 and body["code"] == "embeddings_not_committed", body
        assert b"/srv/run42" not in raw
        store.versions = {"2"}
        store.fail = True
        status, body, raw = _call(svc.port, "GET", "/readyz")
        assert status == 503 and body["code"] == "embeddings_unavailable", body
        assert b"bigtable.internal" not in raw and b"secret" not in raw


def test_error_bodies_hide_hosts_paths_and_tables(toy_model_base, parts):
    store, lookup, _ = parts
    handle = model_server.start_model_server(toy_model_base, "m", poll_interval_s=None)
    ranker = Ranker(handle.target, "m", lookup, timeout_s=2.0)
    try:
        with start_ranker_service(ranker) as svc:
            store.fail = True  # 200, degraded: no store name in the answer
            status, body, raw = _call(svc.port, "POST", "/v1/rank", GOOD)
            assert status == 200 and body["cold_start"] and body["degraded"]
            assert b"secret" not in raw and b"bigtable.internal" not in raw
            store.fail = False
            store.versions = set()
            status, body, raw = _call(svc.port, "POST", "/v1/rank", GOOD)
            assert status == 503 and body["code"] == "embeddings_not_committed"
            assert "model version '2'" in body["error"] and b"/srv/run42" not in raw
            store.versions = {"2"}
            handle.stop()
            status, body, raw = _call(svc.port, "POST", "/v1/rank", GOOD)
            assert status == 503 and body["code"] == "model_unavailable"
            assert str(handle.port).encode() not in raw and b"127.0.0.1" not in raw
    finally:
        ranker.close()
        handle.stop()


def test_shared_token(parts):
    _, _, ranker = parts
    with start_ranker_service(ranker, auth_token="s3cret") as svc:
        status, body, _ = _call(svc.port, "POST", "/v1/rank", GOOD)
        assert status == 401 and body["code"] == "unauthorized"
        assert _call(svc.port, "POST", "/v1/rank", GOOD,
                     {"Authorization": "Bearer wrong"})[0] == 401
        assert _call(svc.port, "POST", "/v1/rank", GOOD,
                     {"Authorization": "Bearer s3cret"})[0] == 200
        assert _call(svc.port, "GET", "/healthz")[0] == 200  # probes stay open


@pytest.mark.parametrize("engine", ["asyncio", "threads"])
def test_bounded_load_has_no_resets_and_no_5xx(parts, engine):
    """100 clients connecting at once, 5 keep-alive requests each (bounded by count)."""
    from benchmarks.ranker_load import run_load

    _, _, ranker = parts
    with start_ranker_service(ranker) as svc:
        row = run_load(svc.url, json.dumps(GOOD).encode(), clients=100, seconds=120,
                       requests_per_client=5, engine=engine)
    assert row["resets"] == 0, row
    assert row["status_5xx"] == 0 and row["timeouts"] == 0, row
    assert row["ok"] == 500, row


def test_servers_bind_loopback_by_default():
    args = build_arg_parser().parse_args(["--model-target", "h:1", "--model-name", "m",
                                          "--embedding-lookup", "a:b"])
    assert args.host == "127.0.0.1"
    assert model_server.build_arg_parser().parse_args([]).host == "127.0.0.1"


def test_fast_body_parser_reads_what_json_reads():
    """``parse_rank_body`` (orjson, stdlib ``json`` where orjson refuses) gives the object the
    stdlib parser gives: escapes, non-ASCII, exponents, 63-bit integers, and the non-standard
    ``Infinity`` that the feature checks must see to name its field."""
    from serving.rank_handlers import parse_rank_body

    bodies = [
        '{"user_id": "\\u00e9l\\u00e8ve \\ud83d\\ude00 \\"q\\"", "item_ids": ["a/b", "\\n"]}',
        '{"user_id": "u", "candidates": [{"item_id": "i", "release_year": -0.0, '
        '"x": 1.5e-7, "y": 9223372036854775807, "z": 0.1, "w": 123456789.123456789}]}',
        '{"user_id": "u", "candidates": [{"release_year": Infinity}], "user_features": null}',
    ]
    for text in bodies:
        got, want = parse_rank_body(text.encode()), json.loads(text)
        assert json.dumps(got) == json.dumps(want) and repr(got) == repr(want), text
