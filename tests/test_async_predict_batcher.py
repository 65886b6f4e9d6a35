"""serving/async_predict_batcher.py: what each Predict carries, with a model server whose answers
are held back until the test releases them. The scores are the inputs' sums (year + sum of the
embedding), so every caller's slice is checked by hand."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from schema import features as F
from serving.async_predict_batcher import AsyncPredictBatcher
from serving.predict_wire import encode_rows
from serving.ranker_types import PredictJob

INPUTS = {F.RELEASE_YEAR: types_pb2.DT_FLOAT}


class HeldServer:
    """Answers p = year + sum(meta_embedding) per row, each call once released."""

    def __init__(self, fail: Exception = None):
        self.batches, self.fail = [], fail
        self.entered = asyncio.Queue()
        self.release = asyncio.Semaphore(0)

    async def __call__(self, request_bytes, timeout=None, metadata=None):
        request = predict_pb2.PredictRequest.FromString(request_bytes)  # what goes on the wire
        assert request.model_spec.signature_name == "predict_raw"
        year = np.frombuffer(request.inputs[F.RELEASE_YEAR].tensor_content, "<f4")
        emb = np.frombuffer(request.inputs[F.META_EMBEDDING].tensor_content, "<f4").reshape(len(year), -1)
        self.batches.append(len(year))
        await self.entered.put(len(year))
        await asyncio.wait_for(self.release.acquire(), 10)
        if self.fail is not None:
            raise self.fail
        resp = predict_pb2.PredictResponse()
        resp.model_spec.version.value = request.model_spec.version.value
        resp.outputs["probabilities"].float_val.extend((year + emb.sum(1)).tolist())
        return resp


def _job(years, emb, version=3):
    columns = {F.RELEASE_YEAR: np.array(years, np.float32)}
    return PredictJob(version, dict(INPUTS),
                      encode_rows(INPUTS, columns, np.array(emb, np.float32), len(years)))


def test_jobs_queued_during_a_predict_share_the_next_and_each_gets_its_slice():
    async def scenario():
        server = HeldServer()
        batcher = AsyncPredictBatcher(server, "m", timeout_s=5.0)
        a = asyncio.create_task(batcher.predict(_job([0.1], [0.0, 0.0])))
        assert await asyncio.wait_for(server.entered.get(), 10) == 1  # a alone, sent at once
        b = asyncio.create_task(batcher.predict(_job([0.2, 0.3], [0.01, 0.02])))
        c = asyncio.create_task(batcher.predict(_job([0.4], [[0.1, 0.1]])))  # [n, W] rows
        await asyncio.sleep(0.05)  # b and c queue behind a's Predict
        assert server.batches == [1]
        server.release.release()
        assert await asyncio.wait_for(a, 10) == (pytest.approx([0.1]), 3)
        assert await asyncio.wait_for(server.entered.get(), 10) == 3  # b and c together
        server.release.release()
        got_b, got_c = await asyncio.wait_for(asyncio.gather(b, c), 10)
        assert got_b[0] == pytest.approx([0.23, 0.33], abs=1e-6)
        assert got_c[0] == pytest.approx([0.6], abs=1e-6)
        assert (batcher.calls, batcher.requests, batcher._sending) == (2, 3, False)

    asyncio.run(scenario())


def test_a_failed_predict_fails_every_job_it_carried_and_the_next_one_is_sent():
    async def scenario():
        server = HeldServer(fail=ConnectionError("model server refused"))
        batcher = AsyncPredictBatcher(server, "m", timeout_s=5.0)
        a = asyncio.create_task(batcher.predict(_job([0.1], [0.0])))
        await server.entered.get()
        b = asyncio.create_task(batcher.predict(_job([0.2], [0.0])))
        c = asyncio.create_task(batcher.predict(_job([0.3], [0.0])))
        await asyncio.sleep(0.05)
        server.release.release()
        await server.entered.get()
        server.release.release()
        results = await asyncio.gather(a, b, c, return_exceptions=True)
        assert all(isinstance(r, ConnectionError) and "refused" in str(r) for r in results)
        assert server.batches == [1, 2] and not batcher._sending and not batcher._pending
        server.fail = None  # the batcher is not stuck: the next job is sent and answered
        d = asyncio.create_task(batcher.predict(_job([0.5], [0.25])))
        await server.entered.get()
        server.release.release()
        assert (await asyncio.wait_for(d, 10))[0] == pytest.approx([0.75], abs=1e-6)

    asyncio.run(scenario())


def test_max_rows_and_versions_split_predicts_and_a_cancelled_caller_harms_no_one():
    async def scenario():
        server = HeldServer()
        batcher = AsyncPredictBatcher(server, "m", timeout_s=5.0, max_rows=3)
        first = asyncio.create_task(batcher.predict(_job([0.0], [0.0])))
        await server.entered.get()
        queued = [asyncio.create_task(batcher.predict(_job([1.0, 2.0], [0.0]))),
                  asyncio.create_task(batcher.predict(_job([3.0], [0.0], version=4))),
                  asyncio.create_task(batcher.predict(_job([4.0, 5.0], [0.0])))]
        gone = asyncio.create_task(batcher.predict(_job([9.0], [0.0])))
        await asyncio.sleep(0.05)
        gone.cancel()  # its client went away while queued
        for _ in range(4):
            server.release.release()
        await asyncio.wait_for(first, 10)
        got = await asyncio.wait_for(asyncio.gather(*queued), 10)
        # taken 3 rows at a time in arrival order: [2 + 1 (v4)] -> one Predict per version,
        # then [2 + 1 (the cancelled job's row, still sent)]
        assert server.batches == [1, 2, 1, 3]
        assert got[0] == (pytest.approx([1.0, 2.0]), 3) and got[1] == (pytest.approx([3.0]), 4)
        assert got[2][0] == pytest.approx([4.0, 5.0])
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(scenario())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_rows"):
        AsyncPredictBatcher(lambda *a, **k: None, "m", 1.0, max_rows=0)
    with pytest.raises(ValueError, match="timeout_s"):
        AsyncPredictBatcher(lambda *a, **k: None, "m", 0.0)


def test_each_job_learns_its_queue_wait_and_the_round_trip_of_its_predict():
    """Planted delays: a's Predict is held 80 ms while b and c queue; theirs is held 40 ms.
    a waited for nothing and its round trip is >= 80 ms; b and c waited >= 60 ms for a's
    Predict (queued 20 ms in) and share one round trip of >= 40 ms (the Server-Timing
    ``queue`` and ``predict`` of each request)."""
    async def scenario():
        server = HeldServer()
        batcher = AsyncPredictBatcher(server, "m", timeout_s=5.0)
        jobs = [_job([0.1], [0.0]), _job([0.2], [0.0]), _job([0.3], [0.0])]
        assert all(j.queue_s is None and j.predict_s is None for j in jobs)
        a = asyncio.create_task(batcher.predict(jobs[0]))
        await asyncio.wait_for(server.entered.get(), 10)
        await asyncio.sleep(0.02)
        rest = [asyncio.create_task(batcher.predict(j)) for j in jobs[1:]]
        await asyncio.sleep(0.06)
        server.release.release()  # a answered 80 ms after it went out
        await asyncio.wait_for(server.entered.get(), 10)
        await asyncio.sleep(0.04)
        server.release.release()
        await asyncio.gather(a, *rest)
        return jobs

    a, b, c = asyncio.run(scenario())
    assert a.predict_s >= 0.079 and a.queue_s < b.queue_s
    assert b.queue_s >= 0.059 and c.queue_s >= 0.059
    assert b.predict_s == c.predict_s and 0.039 <= b.predict_s < a.predict_s + 5.0
    assert a.queue_s + a.predict_s <= b.queue_s + 0.03  # b went out once a had come back


def test_a_lone_job_sends_its_own_predict_and_a_cancelled_sender_strands_nobody():
    """With nothing in flight the caller sends its Predict itself (no drain task); cancelled
    while it is in flight (its client went away), the jobs queued behind it are still sent."""
    async def scenario():
        server = HeldServer()
        batcher = AsyncPredictBatcher(server, "m", timeout_s=5.0)
        lone = asyncio.create_task(batcher.predict(_job([0.5], [0.25])))
        await asyncio.wait_for(server.entered.get(), 10)
        server.release.release()
        assert await asyncio.wait_for(lone, 10) == (pytest.approx([0.75]), 3)
        assert batcher._drainer is None and not batcher._sending
        a = asyncio.create_task(batcher.predict(_job([0.1], [0.0])))
        await asyncio.wait_for(server.entered.get(), 10)
        b = asyncio.create_task(batcher.predict(_job([0.2], [0.1])))
        await asyncio.sleep(0.02)
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        assert await asyncio.wait_for(server.entered.get(), 10) == 1  # b, by the drain task
        server.release.release()
        assert await asyncio.wait_for(b, 10) == (pytest.approx([0.3]), 3)
        assert not batcher._sending

    asyncio.run(scenario())
