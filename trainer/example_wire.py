"""Serialized ``tf.train.Example`` records written straight from columns, many records at once.

Building an Example message feature by feature costs ~0.5 ms per task record (the protobuf
library converts every value of every repeated field); TaskGen writes one record per task. Here
each column is encoded for all records in one numpy pass (float32 values are their own
little-endian bytes, int64 values become varints) and each record is the concatenation of its
slices with the few length prefixes of the wire format::

    Example   = 1: Features (LEN)
    Features  = 1: map entry (LEN), repeated     entry = 1: key (LEN), 2: Feature (LEN)
    Feature   = 1: BytesList | 2: FloatList | 3: Int64List (LEN)
    FloatList = 1: packed float32 (LEN)          Int64List = 1: packed varint (LEN)
    BytesList = 1: bytes (LEN), repeated

(``tensorflow/core/example/example.proto``, ``feature.proto``; protobuf encoding: varints,
length-delimited fields, packed repeated scalars.) Parsed by protobuf or ``tf.io.parse_example``
the records equal those the message API builds (tests/test_example_wire.py).
"""
from __future__ import annotations

import struct
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

INT64, FLOAT, BYTES = "int64", "float", "bytes"
_KINDS = (INT64, FLOAT, BYTES)
_FEATURE_FIELD = {BYTES: 0x0A, FLOAT: 0x12, INT64: 0x1A}  # Feature's oneof, wire type LEN
_LEN1 = 0x0A  # field 1, wire type LEN


def _varint(n: int) -> bytes:
    """Protobuf varint of a non-negative int."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _varint(len(payload)) + payload


def _entry(key: bytes, kind: str, lst: bytes) -> bytes:
    """A Features map entry: ``key`` (its field, encoded) and the Feature holding list ``lst``."""
    return _field(_LEN1, key + _field(0x12, _field(_FEATURE_FIELD[kind], lst)))


def varints(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Varint bytes of int64 ``values`` ``[n, k]``, record-major.

    Negative values take 10 bytes (their two's complement as uint64), as protobuf writes int64.

    Returns:
        ``(data uint8 [total], offsets int64 [n + 1])``: record r's bytes are
        ``data[offsets[r]:offsets[r + 1]]``.
    """
    u = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)
    n = u.shape[0]
    u = u.reshape(n, -1)
    shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
    groups = (u[..., None] >> shifts) & np.uint64(0x7F)              # [n, k, 10]
    size = np.ones(u.shape, np.int64)
    for i in range(1, 10):
        size += (u >= (np.uint64(1) << np.uint64(7 * i))).astype(np.int64)
    used = np.arange(10)[None, None, :] < size[..., None]
    more = np.arange(10)[None, None, :] < (size - 1)[..., None]
    data = (groups | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8)[used]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(size.sum(axis=1), out=offsets[1:])
    return data, offsets


def _entries(name: str, kind: str, values: np.ndarray) -> List[bytes]:
    """The map entry of feature ``name`` for every record (``values`` ``[n, ...]``)."""
    key = _field(_LEN1, name.encode("utf-8"))
    tag = _FEATURE_FIELD[kind]
    n = values.shape[0]
    if kind == BYTES:
        lists = [b"".join(_field(_LEN1, v if isinstance(v, bytes) else str(v).encode("utf-8"))
                          for v in np.asarray(row, dtype=object).reshape(-1)) for row in values]
        return [_entry(key, kind, lst) for lst in lists]
    if kind == FLOAT:
        flat = np.ascontiguousarray(values, dtype="<f4").reshape(n, -1)
        data, width = flat.view(np.uint8).reshape(-1), flat.shape[1] * 4
        offsets = np.arange(n + 1, dtype=np.int64) * width
    else:
        data, offsets = varints(values)
    blob = data.tobytes()
    # Everything before the packed payload depends only on its size (the same bytes as
    # _entry(key, kind, _field(_LEN1, payload)), built once per size).
    headers: Dict[int, bytes] = {}

    def header(size: int) -> bytes:
        if size not in headers:
            # an empty packed field is left out, as protobuf does
            packed_head = (bytes([_LEN1]) + _varint(size)) if size else b""  # the list
            feature_head = bytes([tag]) + _varint(len(packed_head) + size) + packed_head
            entry_body_head = key + bytes([0x12]) + _varint(len(feature_head) + size) + feature_head
            headers[size] = (bytes([_LEN1]) + _varint(len(entry_body_head) + size)
                             + entry_body_head)
        return headers[size]

    bounds = offsets.tolist()
    return [header(hi - lo) + blob[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def feature_entry(name: str, kind: str, value: Any) -> bytes:
    """One record's map entry of feature ``name`` holding the single ``value`` (an int, a
    float stored as float32, or bytes/str), in plain Python: a record's worth of numpy calls
    would cost more than the encoding."""
    if kind == BYTES:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        lst = _field(_LEN1, raw)
    elif kind == INT64:
        lst = _field(_LEN1, _varint(int(value) & 0xFFFFFFFFFFFFFFFF))
    elif kind == FLOAT:
        try:
            payload = struct.pack("<f", float(value))
        except OverflowError:  # beyond float32: the cast gives ±inf, as protobuf stores it
            with np.errstate(over="ignore"):
                payload = np.float32(value).astype("<f4").tobytes()
        lst = _field(_LEN1, payload)
    else:
        raise ValueError(f"feature {name!r}: kind {kind!r}; expected one of {_KINDS}")
    return _entry(_field(_LEN1, name.encode("utf-8")), kind, lst)


def example(entries: Sequence[bytes]) -> bytes:
    """A serialized Example from its map entries (in the order given); no entries: the empty
    message, as protobuf writes an Example without features."""
    return _field(_LEN1, b"".join(entries)) if entries else b""


def serialize_examples(columns: Sequence[Tuple[str, str, np.ndarray]]) -> List[bytes]:
    """Serialized Examples, record r holding feature ``name`` = ``values[r]`` (flattened).

    Args:
        columns: ``(name, kind, values)`` with ``kind`` one of ``"int64"``, ``"float"``
            (float32), ``"bytes"`` (bytes or str, UTF-8) and ``values`` ``[n, ...]``; every
            column has the same n.

    Returns:
        ``n`` serialized ``tf.train.Example`` records.

    Raises:
        ValueError: an unknown kind, or columns of different lengths (named).
    """
    if not columns:
        return []
    n = len(columns[0][2])
    per_feature = []
    for name, kind, values in columns:
        if kind not in _KINDS:
            raise ValueError(f"feature {name!r}: kind {kind!r}; expected one of {_KINDS}")
        if len(values) != n:
            raise ValueError(f"feature {name!r} has {len(values)} records, the first column {n}")
        per_feature.append(_entries(name, kind, np.asarray(values)))
    return [example(parts) for parts in zip(*per_feature)]
