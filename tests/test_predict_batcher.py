"""serving/predict_batcher.py: who sends what, with a model server whose answers are held back
until the test releases them (the interleaving a real server cannot be made to show on cue).
The scores are the inputs' sums, so every caller's slice can be checked by hand."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from schema import features as F
from serving.predict_batcher import PredictBatcher

INPUTS = {F.RELEASE_YEAR: types_pb2.DT_FLOAT}


class HeldServer:
    """Answers p = year + sum(meta_embedding) per row, each call only once released."""

    def __init__(self):
        self.batches, self.release = [], threading.Semaphore(0)
        self.entered = threading.Semaphore(0)

    def __call__(self, request, timeout=None, metadata=None):
        year = np.frombuffer(request.inputs[F.RELEASE_YEAR].tensor_content, "<f4")
        emb = np.frombuffer(request.inputs[F.META_EMBEDDING].tensor_content, "<f4").reshape(len(year), -1)
        self.batches.append(len(year))
        self.entered.release()
        assert self.release.acquire(timeout=10)
        resp = predict_pb2.PredictResponse()
        resp.model_spec.version.value = request.model_spec.version.value
        resp.outputs["probabilities"].float_val.extend((year + emb.sum(1)).tolist())
        return resp


def _call(batcher, out, key, years, emb):
    out[key] = batcher.predict(3, INPUTS, {F.RELEASE_YEAR: np.array(years, np.float32)},
                               np.array(emb, np.float32), len(years))


def test_requests_queued_during_a_predict_share_the_next_and_leadership_is_handed_on():
    server = HeldServer()
    batcher = PredictBatcher(server, "m", timeout_s=5.0)
    out = {}
    a = threading.Thread(target=_call, args=(batcher, out, "a", [0.1], [0.0, 0.0]))
    a.start()
    assert server.entered.acquire(timeout=10)  # a leads, its Predict is in flight
    others = [threading.Thread(target=_call, args=(batcher, out, k, ys, e)) for k, ys, e in
              (("b", [0.2, 0.3], [0.01, 0.02]), ("c", [0.4], [0.1, 0.1]))]
    for t in others:
        t.start()
    time.sleep(0.2)  # b and c queue behind a's Predict
    server.release.release()                   # answer a
    a.join(timeout=10)
    assert not a.is_alive() and out["a"] == (pytest.approx([0.1]), 3)
    assert server.entered.acquire(timeout=10)  # b (promoted) sends b and c together
    server.release.release()
    for t in others:
        t.join(timeout=10)
    assert server.batches == [1, 3]
    assert out["b"][0] == pytest.approx([0.23, 0.33], abs=1e-6)
    assert out["c"][0] == pytest.approx([0.6], abs=1e-6)
    assert (batcher.calls, batcher.requests, batcher._sending) == (2, 3, False)


def test_a_lone_request_is_sent_by_its_own_thread_and_errors_reach_every_caller():
    calls = []

    def failing(request, timeout=None, metadata=None):
        calls.append(threading.current_thread().name)
        raise ConnectionError("model server refused")

    batcher = PredictBatcher(failing, "m", timeout_s=1.0)
    with pytest.raises(ConnectionError, match="refused"):
        _call(batcher, {}, "x", [1.0], [0.0])
    assert calls == [threading.current_thread().name]  # no hand-off to another thread
    assert not batcher._sending and not batcher._pending


def test_a_caller_that_gives_up_leaves_the_queue_and_never_blocks_the_next_ones():
    """b queues behind a's held Predict and gives up; a is answered; c, arriving later, must
    still be sent (were b left queued, a would hand leadership to a caller that is gone)."""
    server = HeldServer()
    batcher = PredictBatcher(server, "m", timeout_s=0.2, wait_margin_s=0.1)
    out = {}
    a = threading.Thread(target=_call, args=(batcher, out, "a", [0.1], [0.0]))
    a.start()
    assert server.entered.acquire(timeout=10)
    with pytest.raises(TimeoutError, match="within 0.3 s"):
        _call(batcher, out, "b", [0.2], [0.0])
    server.release.release()
    a.join(timeout=10)
    assert out["a"][0] == pytest.approx([0.1], abs=1e-6) and "b" not in out
    assert not batcher._pending and not batcher._sending
    c = threading.Thread(target=_call, args=(batcher, out, "c", [0.5], [0.25]))
    c.start()
    assert server.entered.acquire(timeout=10)
    server.release.release()
    c.join(timeout=10)
    assert out["c"][0] == pytest.approx([0.75], abs=1e-6)
    assert server.batches == [1, 1]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="window_s"):
        PredictBatcher(lambda *a, **k: None, "m", 1.0, window_s=-1)
    with pytest.raises(ValueError, match="max_rows"):
        PredictBatcher(lambda *a, **k: None, "m", 1.0, max_rows=0)
