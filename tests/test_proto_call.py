"""serving.model_server.proto_call.ProtoFedSignature: a signature run on serialized input protos,
through the traced function's flat call, answers as the signature itself does."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from serving.model_server.proto_call import ProtoFedSignature, ShapeMismatch


@pytest.fixture(scope="module")
def signature(tmp_path_factory):
    """``score(x [n, 2] float, tag [n] string) = x @ [2, -1] + (tag == "b")`` and ``n`` rows."""

    class Toy(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.string, name="tag")])
        def score(self, x, tag):
            bonus = tf.cast(tf.equal(tag, "b"), tf.float32)
            return {"score": tf.linalg.matvec(x, tf.constant([2.0, -1.0])) + bonus,
                    "rows": tf.shape(x)[0]}

    toy = Toy()
    path = str(tmp_path_factory.mktemp("toy") / "m")
    tf.saved_model.save(toy, path, signatures={"s": toy.score})
    return tf.saved_model.load(path).signatures["s"]


def _protos(x, tag):
    return {"x": tf.make_tensor_proto(np.asarray(x, np.float32)),
            "tag": tf.make_tensor_proto(np.asarray(tag, object))}


def test_flat_call_gives_the_signatures_outputs(signature):
    fed = ProtoFedSignature(signature)
    assert fed._run is not fed._call  # the flat call is there to be used (TensorFlow 2.16)
    x = [[1.0, 2.0], [3.0, 0.5], [0.0, 4.0]]
    tag = [b"a", b"b", b"b"]
    out = fed(_protos(x, tag))
    np.testing.assert_allclose(out["score"].numpy(), [0.0, 6.5, -3.0], atol=1e-6)  # by hand
    assert int(out["rows"]) == 3
    ref = signature(x=tf.constant(x), tag=tf.constant(tag))
    np.testing.assert_array_equal(out["score"].numpy(), ref["score"].numpy())


def test_bad_inputs_are_still_refused(signature):
    fed = ProtoFedSignature(signature)
    with pytest.raises(ShapeMismatch, match="input 'x' has shape \\[3\\]"):
        fed(_protos([1.0, 2.0, 3.0], [b"a", b"b", b"c"]))
    bad = _protos([[1.0, 2.0]], [b"a"])
    bad["x"].tensor_content = b"\x00" * 3  # 3 bytes for a [1, 2] float tensor
    with pytest.raises(tf.errors.InvalidArgumentError):
        fed(bad)


def test_fits_only_the_signatures_exact_inputs_and_leaves_the_request_alone(signature):
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    fed = ProtoFedSignature(signature)
    req = predict_pb2.PredictRequest()
    for alias, proto in _protos([[1.0, 2.0]], [b"a"]).items():
        req.inputs[alias].CopyFrom(proto)
    assert fed.fits(req.inputs)
    missing = predict_pb2.PredictRequest()
    missing.inputs["x"].CopyFrom(req.inputs["x"])
    assert not fed.fits(missing.inputs)
    assert list(missing.inputs) == ["x"]  # asking for "tag" did not add it
    extra = predict_pb2.PredictRequest()
    extra.CopyFrom(req)
    extra.inputs["other"].CopyFrom(req.inputs["x"])
    assert not fed.fits(extra.inputs)
    wrong = predict_pb2.PredictRequest()
    wrong.CopyFrom(req)
    wrong.inputs["x"].dtype = types_pb2.DT_DOUBLE
    assert not fed.fits(wrong.inputs)
