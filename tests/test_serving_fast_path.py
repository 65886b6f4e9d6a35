"""The low-latency serving path: ``predict_raw`` on the exported global block, the ranker's
columnar ``PredictRequest`` and its item cache, against ``serving_default`` on ``tf.Example``s.

Everything runs for real: a small real LiMAML export (real Transform graph), the TF Serving
stand-in over gRPC, the ranker's HTTP service.
"""
from __future__ import annotations

import http.client
import json
import os
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf

from schema import features as F
from serving import model_server
from serving.item_cache import ItemCache
from serving.ranker import InvalidRequest, Ranker
from serving.ranker_service import start_ranker_service
from serving.tf_example import serialize_candidates

try:
    from limaml_serving_fixture import limaml_served  # noqa: F401
    from serving_fixtures import scrape_metrics_until
except ImportError:  # pragma: no cover - run from the repo root
    from tests.limaml_serving_fixture import limaml_served  # noqa: F401
    from tests.serving_fixtures import scrape_metrics_until

ATOL = 1e-5


class _Lookup:
    """One fixed embedding per user (a distinct vector for each), never cold."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def vector(self, user: str) -> np.ndarray:
        seed = sum(user.encode()) % 1000
        return np.random.default_rng(seed).normal(size=self.dim).astype(np.float32)

    def lookup(self, user_ids, model_version):
        emb = np.stack([self.vector(u) for u in user_ids])
        return type("R", (), {"embeddings": emb, "cold": np.zeros(len(user_ids), bool),
                              "degraded": None})()


@pytest.fixture(scope="module")
def stack(limaml_served):
    server = model_server.start_model_server(limaml_served.base, "limaml", poll_interval_s=None)
    lookup = _Lookup(limaml_served.embedding_dim)
    items = ItemCache.from_records(limaml_served.items)
    fast = Ranker(server.target, "limaml", lookup, item_cache=items)
    slow = Ranker(server.target, "limaml", lookup, use_raw_signature=False)
    yield server, fast, slow, lookup
    fast.close()
    slow.close()
    server.stop()


def _cands(served, n: int, offset: int = 0):
    return [dict(served.items[(offset + i) % len(served.items)]) for i in range(n)]


def test_predict_raw_equals_serving_default_in_process(limaml_served):
    loaded = tf.saved_model.load(limaml_served.version_dir)
    assert {"serving_default", "predict_raw"} <= set(loaded.signatures)
    cands = _cands(limaml_served, 25)
    uf = limaml_served.user_features[0]
    emb = np.random.default_rng(0).normal(size=limaml_served.embedding_dim).astype(np.float32)
    examples = serialize_candidates("u1", cands, emb, uf)
    want = loaded.signatures["serving_default"](examples=tf.constant(examples))["probabilities"]
    spec = loaded.signatures["predict_raw"].structured_input_signature[1]
    assert F.META_EMBEDDING in spec and F.ITEM_ID in spec
    raw = {}
    for name, ts in spec.items():
        if name == F.META_EMBEDDING:
            raw[name] = tf.constant(np.tile(emb, (25, 1)))
        elif name in uf:
            raw[name] = tf.constant([uf[name]] * 25, dtype=ts.dtype)
        else:
            raw[name] = tf.constant([c[name] for c in cands], dtype=ts.dtype)
    got = loaded.signatures["predict_raw"](**raw)["probabilities"]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=ATOL)
    assert len(set(np.round(want.numpy(), 6))) > 1  # candidates really differ


@pytest.mark.parametrize("n", [1, 7, 100])
def test_ranker_raw_path_scores_like_the_example_path(limaml_served, stack, n):
    _, fast, slow, _ = stack
    cands = _cands(limaml_served, n, offset=n)
    for user, uf in zip(limaml_served.user_ids[:2], limaml_served.user_features[:2]):
        a = fast.rank(user, cands, uf)
        b = slow.rank(user, cands, uf)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=ATOL)
        assert a.model_version == b.model_version == "1"
    assert fast._raw_inputs[1] is not None  # the raw signature was used
    assert slow._raw_inputs == {}  # never asked: always serving_default


def test_ids_only_and_partial_candidates_use_the_item_cache(limaml_served, stack):
    _, fast, slow, _ = stack
    cands = _cands(limaml_served, 12, offset=3)
    uf = limaml_served.user_features[1]
    user = limaml_served.user_ids[1]
    want = slow.rank(user, cands, uf).scores
    by_id = fast.rank_items(user, [c[F.ITEM_ID] for c in cands], uf).scores
    np.testing.assert_allclose(by_id, want, rtol=0, atol=ATOL)
    partial = [{F.ITEM_ID: c[F.ITEM_ID]} if i % 2 else c for i, c in enumerate(cands)]
    np.testing.assert_allclose(fast.rank(user, partial, uf).scores, want, rtol=0, atol=ATOL)
    with pytest.raises(InvalidRequest, match="unknown item"):
        fast.rank_items(user, ["no-such-item"], uf)
    with pytest.raises(InvalidRequest):
        slow.rank_items(user, [cands[0][F.ITEM_ID]], uf)  # no item cache


def test_missing_user_features_stay_on_predict_raw_with_serving_default_scores(
        limaml_served, stack, monkeypatch):
    """Without user features (or with some of them) the raw path answers, absent values sent
    as "" / 0 (what the Transform makes of absent values), with the scores of tf.Examples
    that omit those features."""
    import serving.ranker as ranker_module

    _, fast, slow, _ = stack
    cands = _cands(limaml_served, 5)
    full = limaml_served.user_features[0]
    some = dict(list(full.items())[:1])
    cases = [None, some, full]
    want = [slow.rank("anon", cands, uf).scores for uf in cases]

    def no_examples(*args, **kwargs):
        raise AssertionError("the ranker fell back to tf.Examples")

    monkeypatch.setattr(ranker_module, "serialize_candidates", no_examples)
    for uf, w in zip(cases, want):
        np.testing.assert_allclose(fast.rank("anon", cands, uf).scores, w, rtol=0, atol=ATOL)


def test_http_ids_only_request(limaml_served, stack):
    _, fast, slow, _ = stack
    svc = start_ranker_service(fast)
    try:
        cands = _cands(limaml_served, 9)
        uf = limaml_served.user_features[2]
        body = {"user_id": "u9", "item_ids": [c[F.ITEM_ID] for c in cands], "user_features": uf}
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
        conn.request("POST", "/v1/rank", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        assert resp.status == 200, answer
        np.testing.assert_allclose(answer["scores"], slow.rank("u9", cands, uf).scores,
                                   rtol=0, atol=ATOL)
        conn.request("POST", "/v1/rank", body=json.dumps({**body, "candidates": cands}),
                     headers={"Content-Type": "application/json"})
        both = conn.getresponse()
        assert both.status == 400 and json.loads(both.read())["code"] == "bad_request"
        conn.close()
    finally:
        svc.stop()


def test_warm_up_goes_through_predict_raw(limaml_served, stack):
    """Warm-up sends one single-candidate request, then one of ``candidates`` (capped by the
    cache and ``max_candidates``), both on predict_raw."""
    server, _, _, lookup = stack
    items = ItemCache.from_records(limaml_served.items)
    with Ranker(server.target, "limaml", lookup, item_cache=items) as ranker:
        sent = []
        real = ranker.rank_items
        ranker.rank_items = lambda user, ids, uf: sent.append(list(ids)) or real(user, ids, uf)
        resp = ranker.warm_up()
        first = next(iter(items._index))
        want = min(16, len(items))
        assert [len(s) for s in sent] == [1, want] and sent[0] == [first] == sent[1][:1]
        assert len(set(sent[1])) == want
        assert resp is not None and len(resp.scores) == want and resp.model_version == "1"
        assert ranker._raw_inputs[1] is not None
        sent.clear()
        ranker.warm_up(candidates=1)
        assert sent == [[first]]
    with Ranker(server.target, "limaml", lookup, item_cache=items, max_candidates=3) as capped:
        assert len(capped.warm_up().scores) == min(3, len(items))
    with Ranker(server.target, "limaml", lookup) as no_cache:
        assert no_cache.warm_up() is None


def test_batched_ranker_gives_each_concurrent_request_its_own_scores(limaml_served, stack):
    """``batch_requests``: 24 requests from 8 threads (different users, candidate counts and
    features) get exactly the scores of one-at-a-time ``serving_default`` calls, in fewer
    Predicts than requests; a Predict that fails fails each request it carried, by name."""
    import threading

    from serving.ranker import ModelServerError, ModelServerUnavailable

    server, _, slow, lookup = stack
    batched = Ranker(server.target, "limaml", lookup, batch_requests=True, batch_window_ms=2.0)
    jobs = []
    for k in range(24):
        u = k % len(limaml_served.user_ids)
        jobs.append((limaml_served.user_ids[u], _cands(limaml_served, 1 + (5 * k) % 40, offset=k),
                     limaml_served.user_features[u]))
    want = [slow.rank(user, cands, uf).scores for user, cands, uf in jobs]
    got, errors = [None] * len(jobs), []
    barrier = threading.Barrier(8)

    def worker(i):
        barrier.wait()
        for j in range(i, len(jobs), 8):
            try:
                got[j] = batched.rank(*jobs[j]).scores
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        for j, (a, b) in enumerate(zip(got, want)):
            assert len(a) == len(jobs[j][1])
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL, err_msg=str(j))
        assert batched._batcher.requests == len(jobs)
        assert batched._batcher.calls < len(jobs)  # requests really shared Predicts
        calls = batched._batcher.calls

        def broken(request, **kwargs):
            raise _RpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")

        batched._batcher._predict = broken
        with pytest.raises((ModelServerUnavailable, ModelServerError), match="refused"):
            batched.rank(*jobs[0])
        assert batched._batcher.calls == calls and not batched._batcher._sending
    finally:
        batched.close()


class _RpcError(grpc.RpcError):
    """A failed call as the gRPC stub raises it (code and details)."""

    def __init__(self, code, details):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class _CachingLookup(_Lookup):
    """``_Lookup`` plus ``lookup_cached``: a user is in memory once looked up (both counted)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.seen, self.store_calls, self.cached_hits = set(), 0, 0

    def lookup(self, user_ids, model_version):
        self.store_calls += 1
        self.seen.update(user_ids)
        return super().lookup(user_ids, model_version)

    def lookup_cached(self, user_ids, model_version):
        if not set(user_ids) <= self.seen:
            return None
        self.cached_hits += 1
        return super().lookup(user_ids, model_version)


def _post(conn, body):
    conn.request("POST", "/v1/rank", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_batching_service_predicts_on_its_event_loop_with_each_requests_own_scores(
        limaml_served, stack):
    """The HTTP service of a batching ranker: 32 requests from 8 keep-alive clients (users,
    candidate counts, ids-only or full candidates) get exactly the one-at-a-time
    ``serving_default`` scores, in fewer Predicts than requests, all sent by the event loop's
    batcher; a user's first request is prepared on a worker (store lookup), later ones on the
    loop (cached)."""
    import threading

    server, _, slow, _ = stack
    lookup = _CachingLookup(limaml_served.embedding_dim)
    ranker = Ranker(server.target, "limaml", lookup, batch_requests=True,
                    item_cache=ItemCache.from_records(limaml_served.items))
    svc = start_ranker_service(ranker)
    jobs = []
    for k in range(32):
        u = k % 5
        user, uf = limaml_served.user_ids[u], limaml_served.user_features[u]
        cands = _cands(limaml_served, 1 + (7 * k) % 30, offset=k)
        body = {"user_id": user, "user_features": uf}
        if k % 2:
            body["item_ids"] = [c[F.ITEM_ID] for c in cands]
        else:
            body["candidates"] = cands
        jobs.append((body, slow.rank(user, cands, uf).scores))
    got, errors = [None] * len(jobs), []
    barrier = threading.Barrier(8)

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
        barrier.wait()
        for j in range(i, len(jobs), 8):
            try:
                got[j] = _post(conn, jobs[j][0])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for j, ((status, answer), (_, want)) in enumerate(zip(got, jobs)):
            assert status == 200, answer
            assert answer["model_version"] == "1" and answer["cold_start"] is False
            np.testing.assert_allclose(answer["scores"], want, rtol=0, atol=ATOL, err_msg=str(j))
        loop_batcher = svc.app._batcher
        # the jobs plus the start-up warm-up Predict (one job of its own)
        assert loop_batcher.requests == len(jobs) + 1 and loop_batcher.calls < len(jobs) + 1
        assert ranker._batcher.calls == 0  # nothing went through the thread batcher
        assert lookup.seen == set(limaml_served.user_ids[:5]) | {"warm-up"}
        assert lookup.cached_hits >= 1 and lookup.store_calls >= 5
        assert lookup.cached_hits + lookup.store_calls >= len(jobs)
    finally:
        svc.stop()
        ranker.close()


def test_loop_predict_failures_answer_like_the_blocking_path(limaml_served, stack):
    """A Predict sent by the loop that fails UNAVAILABLE answers 503 ``model_unavailable``; one
    that finds its version unloaded (NOT_FOUND: a push) is ranked again on the blocking path
    with a refreshed version, and answered 200 with the right scores."""
    server, _, slow, _ = stack
    lookup = _CachingLookup(limaml_served.embedding_dim)
    ranker = Ranker(server.target, "limaml", lookup, batch_requests=True,
                    item_cache=ItemCache.from_records(limaml_served.items))
    svc = start_ranker_service(ranker)
    cands = _cands(limaml_served, 6)
    user, uf = limaml_served.user_ids[1], limaml_served.user_features[1]
    body = {"user_id": user, "candidates": cands, "user_features": uf}
    want = slow.rank(user, cands, uf).scores
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
    try:
        assert _post(conn, body)[0] == 200
        batcher = svc.app._batcher
        real, failures = batcher._predict, []

        async def failing(request, **kwargs):
            code = failures.pop(0)
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details=f"injected {code.name}")

        batcher._predict = failing
        failures[:] = [grpc.StatusCode.UNAVAILABLE]
        status, answer = _post(conn, body)
        assert status == 503 and answer["code"] == "model_unavailable", answer
        failures[:] = [grpc.StatusCode.NOT_FOUND]
        status, answer = _post(conn, body)
        assert status == 200, answer
        np.testing.assert_allclose(answer["scores"], want, rtol=0, atol=ATOL)
        assert ranker._batcher.calls == 1 and not failures  # the retry went the blocking way
        batcher._predict = real
        status, answer = _post(conn, body)
        assert status == 200 and ranker._batcher.calls == 1
        np.testing.assert_allclose(answer["scores"], want, rtol=0, atol=ATOL)
    finally:
        conn.close()
        svc.stop()
        ranker.close()


def test_in_memory_prepare_never_blocks(limaml_served, stack):
    """``Ranker.prepare(in_memory_only=True)`` (what the event loop runs) gives up, rather than
    call the model server or the store, while the served version or its signatures are not
    known, or the user's embedding is not cached. A version due for a refresh is used as it is,
    and the server is asked again in the background."""
    from serving.ranker_errors import _WouldBlock
    from serving.ranker_types import PredictJob

    server, _, _, _ = stack
    lookup = _CachingLookup(limaml_served.embedding_dim)
    cands = _cands(limaml_served, 3)
    u0, u1 = limaml_served.user_ids[:2]
    uf = limaml_served.user_features[0]
    with Ranker(server.target, "limaml", lookup, batch_requests=True) as ranker:
        with pytest.raises(_WouldBlock, match="served version"):
            ranker.prepare(u0, cands, user_features=uf, in_memory_only=True)
        ranker.model_version()
        with pytest.raises(_WouldBlock, match="not in the lookup's cache"):
            ranker.prepare(u0, cands, user_features=uf, in_memory_only=True)
        lookup.seen.add(u0)
        with pytest.raises(_WouldBlock, match="signatures"):
            ranker.prepare(u0, cands, user_features=uf, in_memory_only=True)
        job = ranker.prepare(u0, cands, user_features=uf)  # blocking: asks for the signatures
        assert isinstance(job, PredictJob) and job.version == 1 and job.n == 3
        calls = lookup.store_calls
        fast = ranker.prepare(u0, cands, user_features=uf, in_memory_only=True)
        assert lookup.store_calls == calls and fast.key() == job.key()
        assert fast.rows == job.rows  # the same encoded rows as the blocking prepare
        with pytest.raises(_WouldBlock, match="not in the lookup's cache"):
            ranker.prepare(u1, cands, user_features=uf, in_memory_only=True)
        asked = []
        real_status = ranker._status

        class _CountingStatus:
            def GetModelStatus(self, request, **kwargs):  # noqa: N802 - stub method name
                asked.append(request.model_spec.name)
                return real_status.GetModelStatus(request, **kwargs)

        ranker._status = _CountingStatus()
        ranker._version.next_ask_at = 0.0  # due for a refresh: asked in the background
        stale = ranker.prepare(u0, cands, user_features=uf, in_memory_only=True)
        assert stale.key() == job.key() and stale.version == 1
        deadline = time.monotonic() + 10
        while not asked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert asked == ["limaml"]
    with Ranker(server.target, "limaml", lookup) as unbatched:  # no batcher: nothing deferred
        with pytest.raises(_WouldBlock, match="single-block"):
            unbatched.prepare(u0, cands, user_features=uf, in_memory_only=True)


def test_rank_answers_say_where_their_time_went(limaml_served, stack):
    """``Server-Timing`` of a batching service with a Predict held back 60 ms (planted): its
    ``predict`` is >= 60 ms, ``total`` covers prepare + queue + predict and the client's own
    latency covers ``total``; the scores are still right. A ranker without batching reports
    ``total`` only (its Predict is inside the blocking call)."""
    import asyncio

    from serving.server_timing import parse_server_timing

    server, _, slow, _ = stack
    cands = _cands(limaml_served, 5)
    user, uf = limaml_served.user_ids[2], limaml_served.user_features[2]
    body = json.dumps({"user_id": user, "candidates": cands, "user_features": uf})
    want = slow.rank(user, cands, uf).scores
    for batching in (True, False):
        ranker = Ranker(server.target, "limaml", _CachingLookup(limaml_served.embedding_dim),
                        batch_requests=batching)
        svc = start_ranker_service(ranker)
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
        try:
            conn.request("POST", "/v1/rank", body=body)
            first = conn.getresponse()
            assert first.status == 200, first.read()
            first.read()
            if batching:
                real = svc.app._batcher._predict

                async def held(request, real=real, **kwargs):
                    await asyncio.sleep(0.06)
                    return await real(request, **kwargs)

                svc.app._batcher._predict = held
            t0 = time.perf_counter()
            conn.request("POST", "/v1/rank", body=body)
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            latency_ms = (time.perf_counter() - t0) * 1000.0
            assert resp.status == 200, answer
            np.testing.assert_allclose(answer["scores"], want, rtol=0, atol=ATOL)
            timing = parse_server_timing(resp.getheader("Server-Timing"))
            if batching:
                assert set(timing) == {"prepare", "queue", "predict", "total"}, timing
                assert timing["predict"] >= 59.0 and timing["queue"] < timing["predict"]
                parts = timing["prepare"] + timing["queue"] + timing["predict"]
                assert parts <= timing["total"] + 0.01 <= latency_ms + 0.01
            else:
                assert set(timing) == {"total"}, timing
                assert 0.0 < timing["total"] <= latency_ms
        finally:
            conn.close()
            svc.stop()
            ranker.close()


def test_metrics_of_a_batching_service_time_its_predicts(limaml_served, stack):
    """A batching service behind a token: two rankings, the second with its Predict held back
    60 ms (planted), and one without the token. ``/metrics`` (open without the token) counts
    both Predicts, the held one above the 50 ms bucket, the 401 as an ``unauthorized`` error,
    the candidates and the served version."""
    import asyncio

    server, _, _, _ = stack
    cands = _cands(limaml_served, 5)
    user, uf = limaml_served.user_ids[1], limaml_served.user_features[1]
    body = json.dumps({"user_id": user, "candidates": cands, "user_features": uf}).encode()
    ranker = Ranker(server.target, "limaml", _CachingLookup(limaml_served.embedding_dim),
                    batch_requests=True)
    svc = start_ranker_service(ranker, auth_token="s3cret")
    good = {"Content-Type": "application/json", "Authorization": "Bearer s3cret"}
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
    try:
        conn.request("POST", "/v1/rank", body=body, headers=good)
        first = conn.getresponse()
        assert first.status == 200, first.read()
        first.read()
        real = svc.app._batcher._predict

        async def held(request, real=real, **kwargs):
            await asyncio.sleep(0.06)
            return await real(request, **kwargs)

        svc.app._batcher._predict = held
        conn.request("POST", "/v1/rank", body=body, headers=good)
        second = conn.getresponse()
        assert second.status == 200, second.read()
        second.read()
        conn.request("POST", "/v1/rank", body=body)
        refused = conn.getresponse()
        assert refused.status == 401
        refused.read()
        m = scrape_metrics_until(svc.port, 'limaml_ranker_rank_errors_total{code="unauthorized"}',
                                 1.0)
        assert m['limaml_ranker_rank_errors_total{code="unauthorized"}'] == 1
        assert m['limaml_ranker_requests_total{path="/v1/rank",status="200"}'] == 2
        assert m["limaml_ranker_predict_seconds_count"] == 2
        above_50ms = (m['limaml_ranker_predict_seconds_bucket{le="+Inf"}']
                      - m['limaml_ranker_predict_seconds_bucket{le="0.05"}'])
        assert above_50ms >= 1  # the held Predict, in seconds
        assert 0.06 <= m["limaml_ranker_predict_seconds_sum"] < 5.0
        assert m["limaml_ranker_rank_seconds_sum"] >= m["limaml_ranker_predict_seconds_sum"]
        assert m["limaml_ranker_rank_seconds_count"] == 2
        assert m["limaml_ranker_candidates_total"] == 10
        assert m["limaml_ranker_served_version"] == 1
    finally:
        conn.close()
        svc.stop()
        ranker.close()


def test_a_batching_service_warms_its_loops_channel_up_before_serving(limaml_served, stack):
    """With an item cache, start-up also sends one warm-up Predict (one candidate) through the
    event loop's batcher, so the first client's request is the loop's second gRPC call; the
    first request is then answered with the one-at-a-time scores. Without an item cache (the
    test below) nothing is sent."""
    server, _, slow, _ = stack
    cands = _cands(limaml_served, 4)
    user, uf = limaml_served.user_ids[3], limaml_served.user_features[3]
    ranker = Ranker(server.target, "limaml", _CachingLookup(limaml_served.embedding_dim),
                    item_cache=ItemCache.from_records(limaml_served.items), batch_requests=True)
    job = ranker.warm_up_job()
    assert job is not None and job.n == 1
    svc = start_ranker_service(ranker)
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
    try:
        batcher = svc.app._batcher
        assert batcher.connected and (batcher.calls, batcher.requests) == (1, 1)
        status, answer = _post(conn, {"user_id": user, "candidates": cands, "user_features": uf})
        assert status == 200, answer
        np.testing.assert_allclose(answer["scores"], slow.rank(user, cands, uf).scores,
                                   rtol=0, atol=ATOL)
        assert (batcher.calls, batcher.requests) == (2, 2)
    finally:
        conn.close()
        svc.stop()
        ranker.close()
    plain = Ranker(server.target, "limaml", _CachingLookup(limaml_served.embedding_dim),
                   item_cache=ItemCache.from_records(limaml_served.items), batch_requests=False)
    assert plain.warm_up_job() is None  # no loop batcher to warm
    plain.close()


def test_a_batching_service_connects_its_channel_before_serving(limaml_served, stack):
    """At start (ASGI lifespan) a batching service makes its loop's batcher and connects the
    model-server channel; the first request uses that batcher. With the model server down the
    service still starts (after the connect timeout), unconnected, and answers 503
    ``model_unavailable`` until the server is up."""
    server, _, slow, _ = stack
    cands = _cands(limaml_served, 4)
    user, uf = limaml_served.user_ids[3], limaml_served.user_features[3]
    ranker = Ranker(server.target, "limaml", _CachingLookup(limaml_served.embedding_dim),
                    batch_requests=True)
    svc = start_ranker_service(ranker)
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
    try:
        batcher = svc.app._batcher
        assert batcher is not None and batcher.connected and batcher.calls == 0
        status, answer = _post(conn, {"user_id": user, "candidates": cands, "user_features": uf})
        assert status == 200, answer
        np.testing.assert_allclose(answer["scores"], slow.rank(user, cands, uf).scores,
                                   rtol=0, atol=ATOL)
        assert svc.app._batcher is batcher and batcher.calls == 1
    finally:
        conn.close()
        svc.stop()
        ranker.close()

    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    down = Ranker(dead, "limaml", _CachingLookup(limaml_served.embedding_dim),
                  batch_requests=True, timeout_s=1.0)
    with pytest.raises(ValueError, match="connect_timeout_s=0"):
        start_ranker_service(down, connect_timeout_s=0)
    t0 = time.monotonic()
    svc = start_ranker_service(down, connect_timeout_s=0.5)
    started_s = time.monotonic() - t0
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
    try:
        assert svc.app._batcher is not None and not svc.app._batcher.connected
        assert 0.45 <= started_s < 9.0
        status, answer = _post(conn, {"user_id": user, "candidates": cands, "user_features": uf})
        assert status == 503 and answer["code"] == "model_unavailable", answer
    finally:
        conn.close()
        svc.stop()
        down.close()


def test_the_stand_in_replays_a_versions_warm_up_records_at_load(limaml_served, tmp_path):
    """A version exported with TF Serving warm-up records is warmed at load (2 records); a record
    that fails is skipped and one that works still runs; an unreadable file warms nothing; the
    version serves in every case."""
    import shutil

    from tensorflow_serving.apis import prediction_log_pb2

    from serving.model_server.predict import run_predict
    from serving.model_server.registry import load_servable

    assert load_servable("limaml", 1, limaml_served.version_dir).warmed_up == 2
    copy = str(tmp_path / "7")
    shutil.copytree(limaml_served.version_dir, copy)
    path = os.path.join(copy, "assets.extra", "tf_serving_warmup_requests")
    good = [prediction_log_pb2.PredictionLog.FromString(r)
            for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    bad = prediction_log_pb2.PredictionLog()
    bad.CopyFrom(good[0])
    bad.predict_log.request.inputs.pop(F.ITEM_ID)  # a required input missing
    with tf.io.TFRecordWriter(path) as writer:
        for log in (bad, good[1]):
            writer.write(log.SerializeToString())
    servable = load_servable("limaml", 7, copy)
    assert servable.warmed_up == 1
    with open(path, "wb") as fh:
        fh.write(b"not a TFRecord file")
    servable = load_servable("limaml", 7, copy)
    assert servable.warmed_up == 0
    request = good[1].predict_log.request
    request.model_spec.name = "limaml"
    assert len(run_predict(servable, request).outputs["probabilities"].float_val) == 16
