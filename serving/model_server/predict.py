"""Predict: input checks, the SavedModel call, outputs as TF Serving's typed proto fields."""
from __future__ import annotations

from typing import List, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from serving.model_server.errors import _PREDICT_METHODS, _TF_TO_GRPC, DEFAULT_SIGNATURE, ServingError
from serving.model_server.guard import DEFAULT_MAX_ELEMENTS, TensorCheckError, check_tensor_proto
from serving.model_server.registry import Servable


def _dtype_name(enum_value: int) -> str:
    return types_pb2.DataType.Name(enum_value)


def tensor_to_proto_field(value: np.ndarray) -> tensor_pb2.TensorProto:
    """Encodes an array in typed repeated fields (TF Serving's ``AsProtoField``)."""
    proto = tensor_pb2.TensorProto()
    return fill_proto_field(proto, value)


def fill_proto_field(proto: tensor_pb2.TensorProto, value: np.ndarray) -> tensor_pb2.TensorProto:
    """:func:`tensor_to_proto_field` written into an empty ``proto`` (e.g. a response's output
    entry, which then needs no copy); returns ``proto``, or a new proto for dtypes without a
    typed field."""
    arr = np.asarray(value)
    if arr.dtype == np.float32:  # the scores: the common case first
        proto.dtype = types_pb2.DT_FLOAT
        for d in arr.shape:
            proto.tensor_shape.dim.add().size = int(d)
        proto.float_val.extend(arr.reshape(-1).tolist())
        return proto
    dtype = tf.as_dtype(arr.dtype if arr.dtype != object else tf.string)
    proto.dtype = dtype.as_datatype_enum
    proto.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in arr.shape]
        )
    )
    flat = arr.reshape(-1)
    if dtype == tf.float32:
        proto.float_val.extend(flat.tolist())
    elif dtype == tf.float64:
        proto.double_val.extend(flat.tolist())
    elif dtype in (tf.int32, tf.int16, tf.int8, tf.uint8, tf.uint16):
        proto.int_val.extend(flat.tolist())
    elif dtype == tf.int64:
        proto.int64_val.extend(flat.tolist())
    elif dtype == tf.bool:
        proto.bool_val.extend(flat.tolist())
    elif dtype == tf.string:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        return tf.make_tensor_proto(arr)
    return proto


def _verify_inputs(signature: meta_graph_pb2.SignatureDef, request) -> None:
    sent = set(request.inputs.keys())
    want = set(signature.inputs.keys())
    if len(sent) > len(want) or (len(sent) < len(want) and not signature.defaults):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(want)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(want))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - want))}}}. "
            f"Missing but required: {{{','.join(sorted(want - sent))}}}.",
        )
    for alias in sorted(sent):
        if alias not in signature.inputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                f"the set {{{','.join(sorted(want))}}}.",
            )
        got, expected = request.inputs[alias].dtype, signature.inputs[alias].dtype
        if got != expected:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{alias}] to be {_dtype_name(expected)} but {_dtype_name(got)} is "
                f"provided; send input '{alias}' as {_dtype_name(expected)}",
            )


def _output_aliases(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]) -> List[str]:
    if not output_filter:
        return list(signature.outputs.keys())
    seen: List[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{','.join(sorted(signature.outputs.keys()))}}}.",
            )
        if alias in seen:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}"
            )
        seen.append(alias)
    return seen


def _call_converted(fn, signature: meta_graph_pb2.SignatureDef, request):
    """The signature on eager tensors converted in Python (inputs with defaults left out)."""
    kwargs = {}
    for alias, proto in request.inputs.items():
        try:
            arr = tf.make_ndarray(proto)
        except Exception as exc:  # noqa: BLE001 - malformed TensorProto
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"input '{alias}' is not a valid tensor: {exc}"
            ) from exc
        kwargs[alias] = tf.constant(arr, dtype=tf.as_dtype(signature.inputs[alias].dtype))
    return fn(**kwargs)


def run_predict(servable: Servable, request) -> predict_pb2.PredictResponse:
    """Runs one ``PredictRequest`` against a loaded servable.

    When every input is sent, the signature runs on the serialized input protos in one call
    (:class:`~serving.model_server.proto_call.ProtoFedSignature`); otherwise (inputs with
    defaults left out) on tensors converted here.

    Raises:
        ServingError: with TF Serving's status codes.
    """
    sig_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(sig_name)
    fn = servable.functions.get(sig_name)
    if signature is None or fn is None:
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{sig_name}" not found.'
        )
    if signature.method_name and signature.method_name not in _PREDICT_METHODS:
        raise ServingError(
            grpc.StatusCode.INTERNAL,
            "Expected prediction signature method_name to be one of {"
            + ", ".join(_PREDICT_METHODS) + "}. Was: " + signature.method_name,
        )
    fed = servable.proto_fed(sig_name)
    if fed is None or not fed.fits(request.inputs):
        _verify_inputs(signature, request)  # names the problem, or passes (inputs with defaults)
    aliases = _output_aliases(signature, list(request.output_filter))
    for alias, proto in request.inputs.items():
        try:
            check_tensor_proto(alias, proto, DEFAULT_MAX_ELEMENTS)
        except TensorCheckError as exc:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    if fed is not None and len(request.inputs) != len(signature.inputs):
        fed = None  # inputs with defaults left out: converted here
    try:
        outputs = fed(request.inputs) if fed is not None else _call_converted(
            fn, signature, request)
    except tf.errors.OpError as exc:
        raise ServingError(_TF_TO_GRPC.get(exc.error_code, grpc.StatusCode.UNKNOWN), exc.message) from exc
    except (TypeError, ValueError) as exc:
        # An input whose shape does not fit the signature (ShapeMismatch, or the concrete
        # function's own check).
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = sig_name
    for alias in aliases:
        entry = response.outputs[alias]
        filled = fill_proto_field(entry, outputs[alias].numpy())
        if filled is not entry:  # a dtype without a typed field (make_tensor_proto's own)
            entry.CopyFrom(filled)
    return response
