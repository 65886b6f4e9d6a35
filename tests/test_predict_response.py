"""serving.predict_request.probabilities: a Predict response's scores, whichever way the model
server encoded them (TF Serving's typed field, tensor_content, or another dtype)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from serving.predict_request import PROBABILITIES_OUTPUT, probabilities

VALUES = [0.1, 0.25, 0.9999, 1e-7]


def _response(proto):
    resp = predict_pb2.PredictResponse()
    resp.outputs[PROBABILITIES_OUTPUT].CopyFrom(proto)
    return resp


def test_typed_float_field_gives_the_float32_values():
    proto = tf.make_tensor_proto(np.asarray(VALUES, np.float32).reshape(4, 1))
    typed = predict_pb2.PredictResponse().outputs[PROBABILITIES_OUTPUT]
    typed.dtype = types_pb2.DT_FLOAT
    typed.tensor_shape.CopyFrom(proto.tensor_shape)
    typed.float_val.extend(VALUES)
    got = probabilities(_response(typed), 4)
    assert got == [float(np.float32(v)) for v in VALUES]  # float32 precision, [4, 1] flattened
    assert all(type(v) is float for v in got)
    assert probabilities(_response(proto), 4) == got  # tensor_content: the same numbers
    as_double = tf.make_tensor_proto(np.asarray(VALUES, np.float64))
    np.testing.assert_allclose(probabilities(_response(as_double), 4), VALUES, rtol=1e-6)


def test_a_wrong_count_or_a_missing_output_is_refused():
    typed = predict_pb2.PredictResponse().outputs[PROBABILITIES_OUTPUT]
    typed.dtype = types_pb2.DT_FLOAT
    typed.float_val.extend(VALUES)
    with pytest.raises(ValueError, match="4 probabilities for 3 candidates"):
        probabilities(_response(typed), 3)
    with pytest.raises(ValueError, match="4 probabilities for 5 candidates"):
        probabilities(_response(tf.make_tensor_proto(np.asarray(VALUES, np.float32))), 5)
    with pytest.raises(ValueError, match="expected 'probabilities'"):
        probabilities(predict_pb2.PredictResponse(), 4)
