"""Ranker and its HTTP service against the stand-in TF Serving over real gRPC."""
from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
import tensorflow as tf

from schema import features as F
from serving import model_server
from serving.ranker import InvalidRequest, ModelServerUnavailable, Ranker
from serving.ranker_service import start_ranker_service
from serving.tf_example import serialize_candidates

try:
    from serving_fixtures import *  # noqa: F401,F403
    from serving_fixtures import EMBED_DIM, MODEL_NAME, make_candidates, scrape_metrics_until, toy_scores
except ImportError:  # tests/ is a package
    from tests.serving_fixtures import *  # noqa: F401,F403
    from tests.serving_fixtures import EMBED_DIM, MODEL_NAME, make_candidates, scrape_metrics_until, toy_scores


@dataclass
class Result:
    """The LookupResult shape of serving.embedding_lookup."""

    embeddings: np.ndarray
    cold: np.ndarray
    degraded: Optional[str] = None


COLD = {"1": np.full(EMBED_DIM, 0.05, np.float32), "2": np.full(EMBED_DIM, -0.2, np.float32)}
KNOWN = {
    "1": {"alice": np.array([1.0, 0.0, -1.0, 0.5], np.float32)},
    "2": {"alice": np.array([0.3, -0.7, 0.2, 0.9], np.float32)},
}


class TableLookup:
    """A tiny in-memory implementation of the embedding lookup interface.

    Embeddings per model version; unknown users get that version's cold-start default; when
    ``down`` every user gets the default with a degradation reason.
    """

    def __init__(self) -> None:
        self.down = False
        self.calls = []

    def lookup(self, user_ids: Sequence[str], model_version: str) -> Result:
        self.calls.append((tuple(user_ids), model_version))
        n = len(user_ids)
        cold_vec = COLD[model_version]
        if self.down:
            return Result(np.tile(cold_vec, (n, 1)), np.ones(n, bool),
                          "embedding store unavailable: connection refused")
        table = KNOWN.get(model_version, {})
        embs = np.stack([table.get(u, cold_vec) for u in user_ids]).astype(np.float32)
        return Result(embs, np.array([u not in table for u in user_ids]), None)


class CountingPredict:
    """Wraps a PredictionService stub to count Predict calls and keep the last request."""

    def __init__(self, stub) -> None:
        self._stub = stub
        self.requests = []

    def Predict(self, request, **kwargs):  # noqa: N802 - stub method name
        self.requests.append(request)
        return self._stub.Predict(request, **kwargs)

    def __getattr__(self, name):  # GetModelMetadata and the rest: the real stub
        return getattr(self._stub, name)


@pytest.fixture()
def lookup() -> TableLookup:
    return TableLookup()


@pytest.fixture()
def ranker(toy_model_server, lookup):
    r = Ranker(toy_model_server.target, MODEL_NAME, lookup, timeout_s=5.0, max_candidates=50)
    r._predict = CountingPredict(r._predict)
    yield r
    r.close()


def _years(cands):
    return np.array([c[F.RELEASE_YEAR] for c in cands], np.float64)


def test_known_user_scores_equal_in_process_model(ranker, lookup, toy_model_base):
    """One Predict for all candidates; scores == the SavedModel in-process to 1e-6."""
    cands = make_candidates(12, seed=3)
    resp = ranker.rank("alice", cands)
    assert (resp.model_version, resp.cold_start, resp.degraded) == ("2", False, None)
    assert lookup.calls == [(("alice",), "2")]  # the embedding of the served version
    assert len(ranker._predict.requests) == 1
    req = ranker._predict.requests[0]
    assert req.model_spec.version.value == 2 and req.model_spec.signature_name == "serving_default"
    assert list(req.inputs) == ["examples"] and list(req.output_filter) == ["probabilities"]
    examples = serialize_candidates("alice", cands, KNOWN["2"]["alice"])
    fn = tf.saved_model.load(os.path.join(toy_model_base, "2")).signatures["serving_default"]
    want = fn(examples=tf.constant(examples))["probabilities"].numpy()
    np.testing.assert_allclose(resp.scores, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(resp.scores, toy_scores(2, np.tile(KNOWN["2"]["alice"], (12, 1)),
                                                       _years(cands)), atol=1e-6, rtol=0)
    # Candidate order is kept: reversing the candidates reverses the scores.
    np.testing.assert_allclose(ranker.rank("alice", cands[::-1]).scores, resp.scores[::-1],
                               atol=1e-7, rtol=0)


def test_unknown_user_gets_cold_start_embedding(ranker):
    cands = make_candidates(5, seed=4)
    resp = ranker.rank("nobody", cands)
    assert resp.cold_start is True and resp.degraded is None and resp.model_version == "2"
    np.testing.assert_allclose(resp.scores, toy_scores(2, np.tile(COLD["2"], (5, 1)), _years(cands)),
                               atol=1e-6, rtol=0)


def test_store_down_is_degraded_not_failed(ranker, lookup):
    lookup.down = True
    cands = make_candidates(3)
    resp = ranker.rank("alice", cands)
    assert resp.cold_start is True
    assert resp.degraded == "embedding store unavailable: connection refused"
    np.testing.assert_allclose(resp.scores, toy_scores(2, np.tile(COLD["2"], (3, 1)), _years(cands)),
                               atol=1e-6, rtol=0)


def test_user_features_go_into_every_example(ranker):
    resp = ranker.rank("alice", make_candidates(2), user_features={F.GENDER: "F", F.AGE_BUCKET: "25"})
    assert len(resp.scores) == 2
    ex = tf.train.Example.FromString(ranker._predict.requests[-1].inputs["examples"].string_val[1])
    feats = ex.features.feature
    assert feats[F.GENDER].bytes_list.value == [b"F"]
    assert feats[F.USER_ID].bytes_list.value == [b"alice"]
    assert len(feats[F.META_EMBEDDING].float_list.value) == EMBED_DIM


BAD_REQUESTS: Dict[str, tuple] = {
    "missing feature": ("u", [{F.ITEM_ID: "i", F.GENRES: "Drama"}], None,
                        f"candidates[0].{F.RELEASE_YEAR}"),
    "wrong type": ("u", [{F.ITEM_ID: "i", F.GENRES: "Drama", F.RELEASE_YEAR: "1995"}], None,
                   f"candidates[0].{F.RELEASE_YEAR}"),
    "bool as int": ("u", make_candidates(1) + [{F.ITEM_ID: "i", F.GENRES: "D", F.RELEASE_YEAR: True}],
                    None, f"candidates[1].{F.RELEASE_YEAR}"),
    "string as number": ("u", [{F.ITEM_ID: 7, F.GENRES: "Drama", F.RELEASE_YEAR: 1995}], None,
                         f"candidates[0].{F.ITEM_ID}"),
    "unknown feature": ("u", [{**make_candidates(1)[0], "colour": "red"}], None,
                        "candidates[0].colour"),
    "client sends meta_embedding": ("u", [{**make_candidates(1)[0], F.META_EMBEDDING: [0.0]}], None,
                                    f"candidates[0].{F.META_EMBEDDING}"),
    "too many candidates": ("u", make_candidates(51), None, "candidates"),
    "no candidates": ("u", [], None, "candidates"),
    "candidates not a list": ("u", {"a": 1}, None, "candidates"),
    "candidate not an object": ("u", ["item1"], None, "candidates[0]"),
    "user_id not a string": (42, make_candidates(1), None, "user_id"),
    "empty user_id": ("", make_candidates(1), None, "user_id"),
    "feature in user_features and candidate": (
        "u", [{**make_candidates(1)[0], F.GENDER: "M"}], {F.GENDER: "F"}, f"candidates[0].{F.GENDER}"),
    "bad user feature": ("u", make_candidates(1), {F.ITEM_ID: "x"}, f"user_features.{F.ITEM_ID}"),
    "lone surrogate": ("u", make_candidates(2) + [{**make_candidates(1)[0], F.ITEM_ID: "a\ud800"}],
                       None, f"candidates[2].{F.ITEM_ID}"),
    "int beyond int64": ("u", [{**make_candidates(1)[0], F.RELEASE_YEAR: 2**63}], None,
                         f"candidates[0].{F.RELEASE_YEAR}"),
    "required feature None": ("u", make_candidates(3) + [{**make_candidates(1)[0], F.GENRES: None}],
                              None, f"candidates[3].{F.GENRES}"),
    "bad optional feature late": ("u", make_candidates(4) + [{**make_candidates(1)[0],
                                                              F.TIMESTAMP: 1.5}],
                                  None, f"candidates[4].{F.TIMESTAMP}"),
}


def test_column_checks_accept_what_the_per_candidate_checks_accept(ranker):
    """Plain JSON requests are checked column by column; the result is the columns the
    per-candidate path builds, including optional features some candidates lack or send as
    null, and numpy integers (not plain JSON) still pass through the per-candidate path."""
    cands = make_candidates(4)
    cands[1][F.TIMESTAMP] = 1_000_000
    cands[2][F.TIMESTAMP] = None
    cands[3][F.RELEASE_YEAR] = np.int64(1999)
    columns = ranker.validated_columns("u", cands, {F.GENDER: "F"})
    assert columns[F.TIMESTAMP] == [None, 1_000_000, None, None]
    assert columns[F.RELEASE_YEAR][3] == 1999
    assert columns == {name: [c.get(name) for c in cands] for name in set().union(*cands)}
    assert ranker._plain_columns(cands[:3], None) == {
        name: [c.get(name) for c in cands[:3]] for name in set().union(*cands[:3])}
    assert ranker._plain_columns(cands, None) is None  # np.int64: the per-candidate path


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_malformed_requests_raise_invalid_request(ranker, lookup, case):
    user_id, cands, user_features, field = BAD_REQUESTS[case]
    with pytest.raises(InvalidRequest) as info:
        ranker.rank(user_id, cands, user_features)
    assert info.value.field == field
    assert field in str(info.value)
    assert lookup.calls == [] and ranker._predict.requests == []  # rejected before any call


def test_model_server_down_raises_unavailable(toy_model_base, lookup):
    handle = model_server.start_model_server(toy_model_base, "m", poll_interval_s=None)
    ranker = Ranker(handle.target, "m", lookup, timeout_s=2.0)
    try:
        assert len(ranker.rank("alice", make_candidates(2)).scores) == 2
        handle.stop()
        with pytest.raises(ModelServerUnavailable, match=r"Predict .* UNAVAILABLE"):
            ranker.rank("alice", make_candidates(2))  # version still cached
        with pytest.raises(ModelServerUnavailable, match=r"GetModelStatus .* UNAVAILABLE"):
            ranker.model_version(refresh=True)
    finally:
        handle.stop()
        ranker.close()
    with Ranker(handle.target, "unknown-model", lookup, timeout_s=2.0) as r2:
        with pytest.raises(ModelServerUnavailable):
            r2.rank("alice", make_candidates(1))


def test_new_version_is_picked_up_with_its_own_embeddings(toy_model_base, lookup, tmp_path):
    """After a push unloads the cached version, the ranker refreshes the version and looks the
    embedding up again for the new one: version v only ever gets embeddings of version v."""
    base = tmp_path / "model"
    shutil.copytree(os.path.join(toy_model_base, "1"), base / "1")
    handle = model_server.start_model_server(str(base), "m", poll_interval_s=0.05)
    ranker = Ranker(handle.target, "m", lookup, timeout_s=5.0, version_refresh_s=3600)
    try:
        cands = make_candidates(4, seed=9)
        r1 = ranker.rank("alice", cands)
        assert r1.model_version == "1"
        np.testing.assert_allclose(r1.scores, toy_scores(1, np.tile(KNOWN["1"]["alice"], (4, 1)),
                                                         _years(cands)), atol=1e-6, rtol=0)
        shutil.copytree(os.path.join(toy_model_base, "2"), base / "2")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                status = ranker._status.GetModelStatus(
                    _status_request("m"), timeout=5).model_version_status
                if [(s.version, s.state) for s in status][:2] == [(2, 30), (1, 50)]:
                    break
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.05)
        lookup.calls.clear()
        r2 = ranker.rank("alice", cands)  # cached version 1 is gone -> refresh to 2
        assert r2.model_version == "2"
        assert lookup.calls == [(("alice",), "1"), (("alice",), "2")]
        np.testing.assert_allclose(r2.scores, toy_scores(2, np.tile(KNOWN["2"]["alice"], (4, 1)),
                                                         _years(cands)), atol=1e-6, rtol=0)
    finally:
        ranker.close()
        handle.stop()


class GatedStatus:
    """Wraps a ModelService stub: counts GetModelStatus asks and answers, and holds each ask
    until ``gate`` is set."""

    def __init__(self, stub) -> None:
        self._stub = stub
        self.gate = threading.Event()
        self.gate.set()
        self.asked = 0
        self.finished = 0  # answered or failed
        self.entered = threading.Event()

    def GetModelStatus(self, request, **kwargs):  # noqa: N802 - stub method name
        self.asked += 1
        self.entered.set()
        try:
            assert self.gate.wait(10), "the test never opened the gate"
            return self._stub.GetModelStatus(request, **kwargs)
        finally:
            self.finished += 1


def _wait(predicate, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _serves(ranker, versions) -> bool:
    try:
        status = ranker._status._stub.GetModelStatus(_status_request("m"), timeout=5)
    except Exception:  # noqa: BLE001 - not up yet
        return False
    return [(s.version, s.state) for s in status.model_version_status][:len(versions)] == versions


def test_a_stale_version_is_asked_again_in_the_background(toy_model_base, lookup, tmp_path):
    """Once the cached version is due, a request gets it at once while ONE background
    GetModelStatus runs (held here until the test lets it answer); the answer (a new push)
    serves the requests after it, with that version's embeddings."""
    base = tmp_path / "model"
    shutil.copytree(os.path.join(toy_model_base, "1"), base / "1")
    handle = model_server.start_model_server(str(base), "m", poll_interval_s=0.05)
    ranker = Ranker(handle.target, "m", lookup, timeout_s=5.0, version_refresh_s=3600)
    ranker._status = status = GatedStatus(ranker._status)
    try:
        assert ranker.model_version() == 1 and status.asked == 1
        shutil.copytree(os.path.join(toy_model_base, "2"), base / "2")
        _wait(lambda: _serves(ranker, [(2, 30)]), "version 2 to load")
        assert ranker.model_version() == 1 and status.asked == 1  # fresh: not asked again
        ranker._version.next_ask_at = 0.0  # due
        status.gate.clear()
        status.entered.clear()
        assert ranker.model_version() == 1  # returned while the ask is held at the gate
        assert status.entered.wait(10) and status.finished == 1
        assert ranker.model_version() == 1 and status.asked == 2  # one ask in flight, no more
        status.gate.set()
        _wait(lambda: ranker._version.version == 2, "the background answer")
        lookup.calls.clear()
        r = ranker.rank("alice", make_candidates(3, seed=4))
        assert r.model_version == "2" and status.asked == 2
        assert lookup.calls == [(("alice",), "2")]
    finally:
        status.gate.set()
        ranker.close()
        handle.stop()


def test_a_failed_background_ask_keeps_the_version_and_waits(toy_model_base, lookup, tmp_path,
                                                              caplog):
    """With the model server gone, a due refresh fails in the background: the request still
    gets the cached version, the failure is logged, and the next ask waits a full
    ``version_refresh_s`` instead of following every request. An explicit refresh still
    reports the outage. A closed ranker asks no more."""
    base = tmp_path / "model"
    shutil.copytree(os.path.join(toy_model_base, "1"), base / "1")
    handle = model_server.start_model_server(str(base), "m")
    ranker = Ranker(handle.target, "m", lookup, timeout_s=2.0, version_refresh_s=3600)
    ranker._status = status = GatedStatus(ranker._status)
    try:
        assert ranker.model_version() == 1
        handle.stop()
        ranker._version.next_ask_at = 0.0
        with caplog.at_level(logging.WARNING, logger="serving.ranker_model_client"):
            assert ranker.model_version() == 1
            _wait(lambda: status.finished == 2 and not ranker._version.refreshing,
                  "the background ask to fail")
        assert "still using version 1" in caplog.text
        assert ranker._version.next_ask_at > time.monotonic() + 3000
        assert ranker.model_version() == 1 and status.asked == 2
        with pytest.raises(ModelServerUnavailable, match="GetModelStatus"):
            ranker.model_version(refresh=True)
        assert status.asked == 3
        ranker.close()  # a closed ranker starts no background ask (it would only fail)
        ranker._version.next_ask_at = 0.0
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="serving.ranker_model_client"):
            assert ranker.model_version() == 1
            time.sleep(0.3)
        assert status.asked == 3 and "still using version" not in caplog.text
    finally:
        ranker.close()
        handle.stop()


def _status_request(name):
    from tensorflow_serving.apis import get_model_status_pb2

    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = name
    return req


# --------------------------------------------------------------------------- HTTP service


def _http(port: int, method: str, path: str, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


@pytest.fixture()
def service(ranker):
    handle = start_ranker_service(ranker)
    yield handle
    handle.stop()


def test_http_rank_matches_ranker(service, ranker):
    cands = make_candidates(6, seed=5)
    status, body = _http(service.port, "POST", "/v1/rank", {"user_id": "alice", "candidates": cands})
    assert status == 200
    want = ranker.rank("alice", cands)
    assert body == want.to_json()
    status, body = _http(service.port, "POST", "/v1/rank", {"user_id": "new", "candidates": cands[:2]})
    assert status == 200 and body["cold_start"] is True and len(body["scores"]) == 2
    assert _http(service.port, "GET", "/healthz") == (200, {"status": "ok"})
    assert _http(service.port, "GET", "/readyz") == (200, {"status": "ready", "model_version": "2"})


def test_http_bad_requests_get_400_and_service_keeps_serving(service):
    good = {"user_id": "alice", "candidates": make_candidates(2)}
    bad_bodies = [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b"\xff\xfe", "body"),
        (json.dumps({"candidates": make_candidates(1)}).encode(), "user_id"),
        (json.dumps({"user_id": "u"}).encode(), "candidates"),
        (json.dumps({**good, "extra": 1}).encode(), "extra"),
        (json.dumps({"user_id": "u", "candidates": [{F.ITEM_ID: "i"}]}).encode(),
         f"candidates[0].{F.GENRES}"),
        (json.dumps({"user_id": "u", "candidates": make_candidates(51)}).encode(), "candidates"),
        (json.dumps({"user_id": "u", "candidates": [{**make_candidates(1)[0],
                                                     F.RELEASE_YEAR: 1e400}]}).encode(),
         f"candidates[0].{F.RELEASE_YEAR}"),  # 1e400 parses as inf: not an integer
    ]
    for body, field in bad_bodies:
        status, answer = _http(service.port, "POST", "/v1/rank", body)
        assert status == 400, (body, answer)
        assert answer["error"]
        if field is not None:
            assert answer["field"] == field, answer
        ok_status, ok = _http(service.port, "POST", "/v1/rank", good)
        assert ok_status == 200 and len(ok["scores"]) == 2
    assert _http(service.port, "GET", "/nope")[0] == 404
    assert _http(service.port, "GET", "/v1/rank")[0] == 405
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    conn.putrequest("POST", "/v1/rank")
    conn.putheader("Content-Length", str(5 << 20))  # announced, not sent: answered at once
    conn.endheaders()
    too_big = conn.getresponse()
    assert too_big.status == 413 and "larger than" in json.loads(too_big.read())["error"]
    conn.close()
    assert _http(service.port, "POST", "/v1/rank", good)[0] == 200


def test_http_model_server_down_is_503(toy_model_base, lookup):
    handle = model_server.start_model_server(toy_model_base, "m", poll_interval_s=None)
    ranker = Ranker(handle.target, "m", lookup, timeout_s=2.0)
    svc = start_ranker_service(ranker)
    try:
        good = {"user_id": "alice", "candidates": make_candidates(2)}
        assert _http(svc.port, "POST", "/v1/rank", good)[0] == 200
        handle.stop()
        status, body = _http(svc.port, "POST", "/v1/rank", good)
        assert status == 503 and body["code"] == "model_unavailable"  # details: log only
        assert _http(svc.port, "GET", "/healthz")[0] == 200
        assert _http(svc.port, "GET", "/readyz")[0] in (200, 503)  # version may still be cached
    finally:
        svc.stop()
        ranker.close()
        handle.stop()


def test_serve_bench_smoke(toy_model_base):
    """The benchmark drives the service from another process and reports every column."""
    from benchmarks.serve_bench import format_rows, run_serve_bench

    rows = run_serve_bench(toy_model_base, model_name="bench", embedding_dim=EMBED_DIM,
                           candidate_counts=(1, 10), max_requests=15, max_seconds=5, warmup=2)
    assert [(r["candidates"], r["concurrency"]) for r in rows] == [
        (1, 1), (1, 8), (1, 32), (10, 1), (10, 8), (10, 32)]
    assert {r["signature"] for r in rows} == {"serving_default"}  # the toy has no predict_raw
    for r in rows:
        assert r["requests"] == 15
        assert 0 < r["floor_p50_ms"] and 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["qps"] > 0
    assert "floor_p50" in format_rows(rows)
    # Loopback keep-alive requests take ~1-5 ms here; ~40 ms would mean Nagle + delayed ACK
    # (the service must send with TCP_NODELAY).
    assert rows[0]["p50_ms"] < 30, rows


def test_with_the_real_embedding_lookup(toy_model_server):
    """End to end with serving.embedding_lookup.EmbeddingLookup over a tiny in-test store:
    known user, unknown user, slow store and failing store."""
    el = pytest.importorskip("serving.embedding_lookup")
    from embeddings.record import COLD_START_USER, StoreLookup

    class DictStore:
        mode = "ok"

        def lookup(self, user_ids, model_version, timeout_s=None):
            if self.mode == "down":
                raise ConnectionError("store unreachable")
            if self.mode == "slow":
                time.sleep(0.5)
            table = {**KNOWN.get(model_version, {}), COLD_START_USER: COLD[model_version]}
            found = np.array([u in table for u in user_ids])
            embs = np.stack([table.get(u, np.zeros(EMBED_DIM, np.float32)) for u in user_ids])
            return StoreLookup(embs.astype(np.float32), found)

        def __repr__(self):
            return "DictStore"

    store = DictStore()
    lookup = el.EmbeddingLookup(store, EMBED_DIM, timeout_s=0.1)
    ranker = Ranker(toy_model_server.target, MODEL_NAME, lookup, timeout_s=5.0)
    cands = make_candidates(3, seed=11)
    try:
        known = ranker.rank("alice", cands)
        assert (known.cold_start, known.degraded) == (False, None)
        np.testing.assert_allclose(known.scores, toy_scores(2, np.tile(KNOWN["2"]["alice"], (3, 1)),
                                                            _years(cands)), atol=1e-6, rtol=0)
        cold_want = toy_scores(2, np.tile(COLD["2"], (3, 1)), _years(cands))
        unknown = ranker.rank("bob", cands)
        assert (unknown.cold_start, unknown.degraded) == (True, None)
        np.testing.assert_allclose(unknown.scores, cold_want, atol=1e-6, rtol=0)
        store.mode = "slow"
        slow = ranker.rank("carol", cands)
        assert slow.cold_start and "timed out" in slow.degraded
        np.testing.assert_allclose(slow.scores, cold_want, atol=1e-6, rtol=0)
        store.mode = "down"
        down = ranker.rank("dave", cands)
        assert down.cold_start and "ConnectionError" in down.degraded
        np.testing.assert_allclose(down.scores, cold_want, atol=1e-6, rtol=0)
    finally:
        ranker.close()
        lookup.close()


def test_http_concurrent_requests(service, ranker):
    """Parallel clients each get the scores of their own request."""
    from concurrent.futures import ThreadPoolExecutor

    requests = [("alice" if i % 2 else f"user{i}", make_candidates(1 + i % 7, seed=i))
                for i in range(24)]
    want = [ranker.rank(u, c).to_json() for u, c in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda rc: _http(service.port, "POST", "/v1/rank",
                                             {"user_id": rc[0], "candidates": rc[1]}), requests))
    assert [g[0] for g in got] == [200] * len(requests)
    for (_status, body), expected in zip(got, want):
        np.testing.assert_allclose(body["scores"], expected["scores"], atol=1e-7, rtol=0)
        assert body["cold_start"] == expected["cold_start"]


def test_metrics_count_what_the_service_answered(service, lookup):
    """``GET /metrics`` after a planted mix of answers: 3 rankings (a known user with 4
    candidates, an unknown one with 3, the known one with 2 while the store is down: cold and
    degraded), one malformed body, one unknown path, one liveness probe. Every count is the
    planted one; the ranking histogram holds the 3 answers and no Predict (no batching)."""
    port = service.port
    assert _http(port, "POST", "/v1/rank", {"user_id": "alice",
                                            "candidates": make_candidates(4)})[0] == 200
    assert _http(port, "POST", "/v1/rank", {"user_id": "bob",
                                            "candidates": make_candidates(3)})[0] == 200
    lookup.down = True
    assert _http(port, "POST", "/v1/rank", {"user_id": "alice",
                                            "candidates": make_candidates(2)})[0] == 200
    assert _http(port, "POST", "/v1/rank", {"candidates": make_candidates(1)})[0] == 400
    status, body = _http(port, "GET", "/nope")
    assert status == 404 and "GET /metrics" in body["error"]
    assert _http(port, "GET", "/healthz")[0] == 200
    assert _http(port, "POST", "/metrics")[0] == 405
    m = scrape_metrics_until(port, 'limaml_ranker_requests_total{path="/metrics",status="405"}', 1.0)
    assert m['limaml_ranker_requests_total{path="/v1/rank",status="200"}'] == 3
    assert m['limaml_ranker_requests_total{path="/v1/rank",status="400"}'] == 1
    assert m['limaml_ranker_requests_total{path="other",status="404"}'] == 1
    assert m['limaml_ranker_requests_total{path="/healthz",status="200"}'] == 1
    assert m['limaml_ranker_rank_errors_total{code="bad_request"}'] == 1
    assert m["limaml_ranker_cold_start_total"] == 2  # bob, and alice with the store down
    assert m["limaml_ranker_degraded_total"] == 1
    assert m["limaml_ranker_candidates_total"] == 4 + 3 + 2
    assert m["limaml_ranker_rank_seconds_count"] == 3 and m["limaml_ranker_rank_seconds_sum"] > 0
    assert m['limaml_ranker_rank_seconds_bucket{le="+Inf"}'] == 3
    buckets = [m[f'limaml_ranker_rank_seconds_bucket{{le="{b}"}}'] for b in
               ("0.0005", "0.001", "0.002", "0.005", "0.01", "0.1", "1.0", "2.5")]
    assert buckets == sorted(buckets)  # cumulative
    assert m["limaml_ranker_predict_seconds_count"] == 0
    assert m["limaml_ranker_served_version"] == 2  # the toy server serves its latest, 2
    assert m["limaml_ranker_pending_requests"] == 0
    again = scrape_metrics_until(port, 'limaml_ranker_requests_total{path="/metrics",status="200"}', 1.0)
    assert again['limaml_ranker_requests_total{path="/metrics",status="200"}'] == 1

