"""A batch of ``predict_raw`` requests as one serialized ``PredictRequest``, by concatenation.

Protocol buffers encode a repeated field as the concatenation of its elements and a bytes field
as its raw bytes, so a ``predict_raw`` request's rows can be encoded once, when the request is
prepared (:func:`encode_rows`), and any run of prepared requests becomes the wire bytes of one
``PredictRequest`` by joining those pieces under the right headers (:func:`batch_request_bytes`).
The event loop's batcher (:mod:`serving.async_predict_batcher`) sends these bytes as they are, so
building a batch takes a few joins instead of re-encoding every row after the previous Predict
returned. The bytes parse to the message :func:`serving.predict_request.raw_request` builds
(``tests/test_predict_wire.py``).

Per input of ``[N]`` rows (``[N, W]`` for ``meta_embedding``), the piece is:

* strings: the ``string_val`` entries (field 8, one per row, each value's entry cached:
  :class:`StringEntries`; a value shared by every row, as the user's id and features are, is
  encoded once and repeated);
* numbers and the embedding: the rows' little-endian bytes, later sent as ``tensor_content``.

Field numbers are read from the protos' descriptors, not written out here.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Mapping, Sequence

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2

from schema import features as F
from serving import predict_request as PR


def _number(message, field: str) -> int:
    return message.DESCRIPTOR.fields_by_name[field].number


_T_DTYPE = _number(tensor_pb2.TensorProto, "dtype")
_T_SHAPE = _number(tensor_pb2.TensorProto, "tensor_shape")
_T_CONTENT = _number(tensor_pb2.TensorProto, "tensor_content")
_SHAPE_DIM = _number(tensor_shape_pb2.TensorShapeProto, "dim")
_DIM_SIZE = _number(tensor_shape_pb2.TensorShapeProto.Dim, "size")
_REQ_SPEC = _number(predict_pb2.PredictRequest, "model_spec")
_REQ_INPUTS = _number(predict_pb2.PredictRequest, "inputs")
_REQ_FILTER = _number(predict_pb2.PredictRequest, "output_filter")
_SPEC_NAME = _number(model_pb2.ModelSpec, "name")
_SPEC_VERSION = _number(model_pb2.ModelSpec, "version")
_SPEC_SIGNATURE = _number(model_pb2.ModelSpec, "signature_name")
_MAP_KEY, _MAP_VALUE, _WRAPPED_VALUE = 1, 2, 1  # map entries; google.protobuf.Int64Value.value


_ONE_BYTE = [bytes((v,)) for v in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _int_field(field: int, value: int) -> bytes:
    return _tag(field, 0) + _varint(value)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _tag(field, 2) + _varint(len(payload)) + payload


_T_STRING_VAL = _number(tensor_pb2.TensorProto, "string_val")


class StringEntries:
    """The ``string_val`` entries (tag, length, bytes) of string values, cached by value.

    Item ids and genres repeat from request to request: joining cached entries costs ~3 µs for
    100 values, building and serializing a ``TensorProto`` ~16 µs (per column, per request).
    At ``max_entries`` the cache starts over. Safe to share between threads (a value missing
    meanwhile is encoded again).
    """

    def __init__(self, max_entries: int = 1 << 18) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries={max_entries}; give at least 1")
        self.max_entries = int(max_entries)
        self._entries: Dict[bytes, bytes] = {}

    def join(self, values: Sequence[bytes]) -> bytes:
        """The entries of ``values`` (UTF-8 bytes), in order: the column's ``string_val``."""
        try:
            return b"".join(map(self._entries.get, values))  # None for a new value: TypeError
        except TypeError:
            return b"".join([self._entries.get(v) or self._add(v) for v in values])

    def _add(self, value: bytes) -> bytes:
        if isinstance(value, str):  # as the message API takes it: UTF-8
            data = value.encode("utf-8")
        elif isinstance(value, bytes):
            data = value
        else:
            raise TypeError(f"string values must be bytes or str, got {type(value).__name__} "
                            f"{value!r}")
        entry = _bytes_field(_T_STRING_VAL, data)
        if len(self._entries) >= self.max_entries:
            self._entries = {}
        self._entries[value] = entry
        return entry


_STRING_ENTRIES = StringEntries()


@dataclass(frozen=True)
class EncodedRows:
    """One request's ``predict_raw`` rows in wire form (see the module doc).

    Attributes:
        n: rows (candidates).
        pieces: input name -> its rows' piece (``meta_embedding`` included).
        width: the embedding's width W (``meta_embedding`` is ``[n, W]``).
    """

    n: int
    pieces: Dict[str, bytes]
    width: int


def encode_rows(inputs: Mapping[str, int], columns: Mapping[str, object],
                meta_embedding: np.ndarray, n: int) -> EncodedRows:
    """Encodes one request's rows (the arguments of :func:`serving.predict_request.raw_request`).

    Args:
        inputs: input name -> dtype enum (without the embedding).
        columns: input name -> ``[n]`` values (UTF-8 bytes for strings, arrays for numbers).
        meta_embedding: float32 ``[E]`` (repeated for the n rows) or ``[n, W]``.
        n: rows.

    Raises:
        ValueError: an ``[n, W]`` embedding with another number of rows, or a column of
            another length.
    """
    pieces: Dict[str, bytes] = {}
    for name, dtype in inputs.items():
        col = columns[name]
        if len(col) != n:  # type: ignore[arg-type]
            raise ValueError(f"input {name!r} has {len(col)} values for {n} rows")  # type: ignore[arg-type]
        if dtype == types_pb2.DT_STRING:
            values = col if isinstance(col, list) else list(col)  # type: ignore[call-overload]
            if n and values.count(values[0]) == n:
                # one value on every row (the user's id and features): one entry, repeated
                pieces[name] = _STRING_ENTRIES.join(values[:1]) * n
            else:
                pieces[name] = _STRING_ENTRIES.join(values)
        else:
            arr = np.ascontiguousarray(col, dtype=np.dtype(PR._NUMPY_OF[dtype]).newbyteorder("<"))
            pieces[name] = arr.tobytes()
    emb = np.asarray(meta_embedding, np.float32)
    if emb.ndim == 1:
        emb = np.broadcast_to(emb, (n, emb.shape[0]))
    elif emb.shape[0] != n:
        raise ValueError(f"meta_embedding has {emb.shape[0]} rows for {n} candidates")
    pieces[F.META_EMBEDDING] = np.ascontiguousarray(emb, dtype="<f4").tobytes()
    return EncodedRows(n, pieces, int(emb.shape[1]))


def _tensor(dtype: int, dims: Sequence[int], body: bytes) -> bytes:
    shape = b"".join([_bytes_field(_SHAPE_DIM, _int_field(_DIM_SIZE, d)) for d in dims])
    return b"".join((_int_field(_T_DTYPE, dtype), _bytes_field(_T_SHAPE, shape), body))


@functools.lru_cache(maxsize=64)
def _map_key(name: str) -> bytes:
    return _bytes_field(_MAP_KEY, name.encode("utf-8"))


@functools.lru_cache(maxsize=64)
def _head(model_name: str, version: int) -> bytes:
    """The request's ``model_spec`` field."""
    spec = (_bytes_field(_SPEC_NAME, model_name.encode("utf-8"))
            + _bytes_field(_SPEC_VERSION, _int_field(_WRAPPED_VALUE, int(version)))
            + _bytes_field(_SPEC_SIGNATURE, PR.RAW_SIGNATURE.encode("utf-8")))
    return _bytes_field(_REQ_SPEC, spec)


_TAIL = _bytes_field(_REQ_FILTER, PR.PROBABILITIES_OUTPUT.encode("utf-8"))


def batch_request_bytes(model_name: str, version: int, inputs: Mapping[str, int],
                        parts: Sequence[EncodedRows]) -> bytes:
    """The serialized ``predict_raw`` ``PredictRequest`` carrying ``parts``' rows in order.

    Args:
        model_name: the served model.
        version: the pinned version.
        inputs: input name -> dtype enum (without the embedding), as for every part.
        parts: encoded requests of the same inputs and embedding width.

    Raises:
        ValueError: parts of different embedding widths.
    """
    total = sum(p.n for p in parts)
    widths = {p.width for p in parts}
    if len(widths) != 1:
        raise ValueError(f"parts of embedding widths {sorted(widths)} cannot share a Predict")
    out = [_head(model_name, int(version))]
    for name, dtype in (*inputs.items(), (F.META_EMBEDDING, types_pb2.DT_FLOAT)):
        joined = (parts[0].pieces[name] if len(parts) == 1
                  else b"".join([p.pieces[name] for p in parts]))
        if name == F.META_EMBEDDING:
            tensor = _tensor(dtype, (total, widths.pop()), _bytes_field(_T_CONTENT, joined))
        elif dtype == types_pb2.DT_STRING:
            tensor = _tensor(dtype, (total,), joined)
        else:
            tensor = _tensor(dtype, (total,), _bytes_field(_T_CONTENT, joined))
        out.append(_bytes_field(_REQ_INPUTS, _map_key(name) + _bytes_field(_MAP_VALUE, tensor)))
    out.append(_TAIL)
    return b"".join(out)


__all__ = ["EncodedRows", "StringEntries", "batch_request_bytes", "encode_rows"]
