"""``PredictRequest``s of the global block, built from columns (numpy), and their answers.

Two signatures of the exported global block (``trainer/export.py``):

* ``serving_default``: input ``examples``, serialized ``tf.Example``s (raw features +
  ``meta_embedding``), one per candidate; what any TF Serving client may send.
* ``predict_raw`` (:data:`RAW_SIGNATURE`): one tensor per raw feature the global block reads
  (item columns; older exports also took the user's), a row per candidate (``[N]``), and
  ``meta_embedding`` ``[N, E]``. Built here from whole columns: strings go in
  ``string_val`` with one ``extend``, numbers and the embedding in ``tensor_content`` with one
  ``tobytes``; no per-candidate protobuf message.

:func:`raw_signature_inputs` reads which inputs (and dtypes) a served version's ``predict_raw``
takes from ``GetModelMetadata``, so the ranker uses it only where the model has it.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from schema import features as F

SERVING_SIGNATURE = "serving_default"
RAW_SIGNATURE = "predict_raw"
EXAMPLES_INPUT = "examples"
PROBABILITIES_OUTPUT = "probabilities"

_NUMPY_OF = {types_pb2.DT_INT64: np.int64, types_pb2.DT_FLOAT: np.float32,
             types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32}


def _fill_string(proto: tensor_pb2.TensorProto, values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    proto.dtype = types_pb2.DT_STRING
    proto.tensor_shape.dim.add().size = len(values)
    proto.string_val.extend(values)
    return proto


def _fill_numeric(proto: tensor_pb2.TensorProto, values: np.ndarray, dtype: int
                  ) -> tensor_pb2.TensorProto:
    arr = np.ascontiguousarray(values, dtype=_NUMPY_OF[dtype])
    proto.dtype = dtype
    for d in arr.shape:
        proto.tensor_shape.dim.add().size = int(d)
    proto.tensor_content = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return proto


def string_tensor(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    """A ``DT_STRING [N]`` tensor of UTF-8 byte strings (one ``extend``)."""
    return _fill_string(tensor_pb2.TensorProto(), values)


def numeric_tensor(values: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    """A numeric tensor of ``values``' shape, as ``tensor_content`` (one ``tobytes``).

    Args:
        values: the array.
        dtype: a ``types_pb2`` numeric dtype (int64, float, double, int32).
    """
    return _fill_numeric(tensor_pb2.TensorProto(), values, dtype)


def examples_request(model_name: str, version: int, examples: Sequence[bytes]
                     ) -> predict_pb2.PredictRequest:
    """``serving_default`` request: serialized ``tf.Example``s in input ``examples``."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.version.value = version
    req.model_spec.signature_name = SERVING_SIGNATURE
    req.inputs[EXAMPLES_INPUT].CopyFrom(string_tensor(examples))
    req.output_filter.append(PROBABILITIES_OUTPUT)
    return req


def raw_request(model_name: str, version: int, inputs: Mapping[str, int],
                columns: Mapping[str, object], meta_embedding: np.ndarray, n: int
                ) -> predict_pb2.PredictRequest:
    """``predict_raw`` request from columns.

    Args:
        model_name: the served model.
        version: the pinned version.
        inputs: input name -> dtype, from :func:`raw_signature_inputs` (without the embedding).
        columns: input name -> ``[N]`` values: a list of UTF-8 bytes for strings, an array for
            numbers; every name of ``inputs`` must be there.
        meta_embedding: float32 ``[E]`` of the user (repeated for the N rows), or ``[N, W]``
            one row per candidate (a multi-block model's ``[e_user, e_user×genre]``).
        n: candidates.

    Returns:
        The request.
    """
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.version.value = version
    req.model_spec.signature_name = RAW_SIGNATURE
    for name, dtype in inputs.items():
        if dtype == types_pb2.DT_STRING:  # filled in place: no message built then copied
            _fill_string(req.inputs[name], columns[name])  # type: ignore[arg-type]
        else:
            _fill_numeric(req.inputs[name], np.asarray(columns[name]), dtype)
    emb = np.asarray(meta_embedding, np.float32)
    if emb.ndim == 1:
        emb = np.broadcast_to(emb, (n, emb.shape[0]))
    elif emb.shape[0] != n:
        raise ValueError(f"meta_embedding has {emb.shape[0]} rows for {n} candidates")
    _fill_numeric(req.inputs[F.META_EMBEDDING], emb, types_pb2.DT_FLOAT)
    req.output_filter.append(PROBABILITIES_OUTPUT)
    return req


def raw_signature_inputs(metadata: get_model_metadata_pb2.GetModelMetadataResponse
                         ) -> Optional[Dict[str, int]]:
    """The ``predict_raw`` inputs (name -> dtype, ``meta_embedding`` left out), or None.

    None when the version has no such signature (an older export), or its inputs are not one
    ``[N]`` tensor per canonical serving feature plus ``meta_embedding``.
    """
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    any_msg = metadata.metadata.get("signature_def")
    if any_msg is None or not any_msg.Unpack(sig_map):
        return None
    sig: Optional[meta_graph_pb2.SignatureDef] = sig_map.signature_def.get(RAW_SIGNATURE)
    if sig is None or F.META_EMBEDDING not in sig.inputs:
        return None
    out: Dict[str, int] = {}
    for name, info in sig.inputs.items():
        if name == F.META_EMBEDDING:
            continue
        if name not in F.CANONICAL_COLUMNS or len(info.tensor_shape.dim) != 1:
            return None
        if info.dtype != types_pb2.DT_STRING and info.dtype not in _NUMPY_OF:
            return None
        out[name] = info.dtype
    return out


def probabilities(resp: predict_pb2.PredictResponse, n: int) -> List[float]:
    """The ``[N]`` probabilities of a response.

    Raises:
        ValueError: the output is missing or has another length (message says which).
    """
    if PROBABILITIES_OUTPUT not in resp.outputs:
        raise ValueError(f"outputs {sorted(resp.outputs)}; expected {PROBABILITIES_OUTPUT!r}")
    proto = resp.outputs[PROBABILITIES_OUTPUT]
    if proto.float_val and proto.dtype == types_pb2.DT_FLOAT:
        # TF Serving's typed field (float32 values): read as they are, no numpy round trip
        scores = list(proto.float_val)
    else:
        if proto.float_val:
            values = np.asarray(proto.float_val, dtype=np.float32)
        elif proto.tensor_content and proto.dtype == types_pb2.DT_FLOAT:
            values = np.frombuffer(proto.tensor_content, dtype="<f4")
        else:
            from tensorflow import make_ndarray

            values = np.asarray(make_ndarray(proto), dtype=np.float32)
        scores = values.reshape(-1).tolist()
    if len(scores) != n:
        raise ValueError(f"{len(scores)} probabilities for {n} candidates; the signature "
                         "must return one per candidate")
    return scores


__all__ = ["EXAMPLES_INPUT", "PROBABILITIES_OUTPUT", "RAW_SIGNATURE", "SERVING_SIGNATURE",
           "examples_request", "numeric_tensor", "probabilities", "raw_request",
           "raw_signature_inputs", "string_tensor"]
