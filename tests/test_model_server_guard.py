"""The stand-in model server's limits over real gRPC: message size, tensor shapes, shared token."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from schema import features as F
from serving import model_server
from serving.ranker import Ranker

try:
    from serving_fixtures import *  # noqa: F401,F403
    from serving_fixtures import EMBED_DIM, make_candidates
except ImportError:  # pragma: no cover - run from the repo root
    from tests.serving_fixtures import *  # noqa: F401,F403
    from tests.serving_fixtures import EMBED_DIM, make_candidates


def _dense_request(emb_dims, years_dims, emb_values=None):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "g"
    req.model_spec.signature_name = "dense"
    emb = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in emb_dims]))
    emb.float_val.extend(emb_values if emb_values is not None else [0.5])
    years = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in years_dims]))
    years.int64_val.extend([1990])
    req.inputs[F.META_EMBEDDING].CopyFrom(emb)
    req.inputs[F.RELEASE_YEAR].CopyFrom(years)
    return req


def tf_make(arr: np.ndarray) -> tensor_pb2.TensorProto:
    from serving.predict_request import numeric_tensor

    dtype = types_pb2.DT_FLOAT if arr.dtype == np.float32 else types_pb2.DT_INT64
    return numeric_tensor(arr, dtype)


@pytest.fixture()
def server(toy_model_base):
    handle = model_server.start_model_server(toy_model_base, "g", poll_interval_s=None)
    channel = grpc.insecure_channel(handle.target, options=[
        ("grpc.max_send_message_length", 200 << 20), ("grpc.max_receive_message_length", 200 << 20)])
    yield handle, prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()
    handle.stop()


def test_negative_or_huge_dimensions_are_invalid_argument(server):
    _, stub = server
    ok = stub.Predict(_dense_request([1, EMBED_DIM], [1]), timeout=10)
    assert len(ok.outputs["probabilities"].float_val) == 1
    for emb_dims, years_dims in (([-1, EMBED_DIM], [1]), ([1, EMBED_DIM], [-5]),
                                 ([1 << 40, EMBED_DIM], [1 << 40])):
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(_dense_request(emb_dims, years_dims), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (emb_dims, err.value)
    with pytest.raises(grpc.RpcError) as err:  # 3 values for a [1, 4] shape
        stub.Predict(_dense_request([1, EMBED_DIM], [1], [0.1, 0.2, 0.3]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_100_mb_request_is_refused(server):
    """A well-formed request of 100 MB (which the model could score) is refused by size."""
    _, stub = server
    n = (100 << 20) // (4 * EMBED_DIM + 8)
    big = predict_pb2.PredictRequest()
    big.model_spec.name = "g"
    big.model_spec.signature_name = "dense"
    big.inputs[F.META_EMBEDDING].CopyFrom(tf_make(np.zeros((n, EMBED_DIM), np.float32)))
    big.inputs[F.RELEASE_YEAR].CopyFrom(tf_make(np.full(n, 1990, np.int64)))
    assert big.ByteSize() > 99 << 20
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(big, timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_shared_token(toy_model_base):
    handle = model_server.launch_model_server(toy_model_base, "g", binary="",
                                              auth_token="tok-1")
    try:
        with grpc.insecure_channel(handle.target) as channel:
            status = model_service_pb2_grpc.ModelServiceStub(channel)
            req = get_model_status_pb2.GetModelStatusRequest()
            req.model_spec.name = "g"
            with pytest.raises(grpc.RpcError) as err:
                status.GetModelStatus(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                status.GetModelStatus(req, timeout=10, metadata=(("authorization", "Bearer no"),))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert status.GetModelStatus(
                req, timeout=10, metadata=(("authorization", "Bearer tok-1"),)).model_version_status

        class Lookup:
            def lookup(self, user_ids, model_version):
                n = len(user_ids)
                return type("R", (), {"embeddings": np.zeros((n, EMBED_DIM), np.float32),
                                      "cold": np.zeros(n, bool), "degraded": None})()

        with Ranker(handle.target, "g", Lookup(), auth_token="tok-1") as ranker:
            assert len(ranker.rank("u", make_candidates(3)).scores) == 3
    finally:
        handle.stop()
