"""Top TensorFlow ops of a function, from TF's own profiler (``limaml bench train --profile``).

:func:`top_ops` runs a function under ``tf.profiler.experimental``, converts the trace
(``*.xplane.pb``) with the profiler's ``framework_op_stats`` converter (the table of
TensorBoard's "TensorFlow stats" page) and sums the self time of every op type over the run, without idle time.

The converter returns a serialized ``TfStatsDatabase`` (``tensorflow/core/profiler/protobuf/
tf_stats.proto``), whose Python classes TensorFlow does not ship; :func:`parse_tf_stats` reads
the few fields used here straight from the protobuf wire format:

    TfStatsDatabase: 5 = without_idle (TfStatsTable)
    TfStatsTable:    1 = repeated TfStatsRecord
    TfStatsRecord:   2 = host_or_device, 3 = op_type, 4 = op_name, 5 = occurrences,
                     8 = total_self_time_in_us (double)
"""
from __future__ import annotations

import glob
import os
import struct
import tempfile
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Tuple

_WITHOUT_IDLE, _RECORD = 5, 1
_HOST_OR_DEVICE, _OP_TYPE, _OP_NAME, _OCCURRENCES, _SELF_US = 2, 3, 4, 5, 8


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[Tuple[int, Any]]:
    """``(field number, value)`` of one message: ints for varints, bytes for length-delimited
    fields, floats for 64-bit fields (doubles), ints for 32-bit fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<d", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {field})")
        yield field, value


def parse_tf_stats(data: bytes) -> List[Dict[str, Any]]:
    """The ``without_idle`` records of a serialized ``TfStatsDatabase``.

    Returns:
        ``[{"host_or_device", "op_type", "op_name", "occurrences", "self_us"}]``.
    """
    out: List[Dict[str, Any]] = []
    for field, table in _fields(data):
        if field != _WITHOUT_IDLE:
            continue
        for rfield, record in _fields(table):
            if rfield != _RECORD:
                continue
            row = {"host_or_device": "", "op_type": "", "op_name": "", "occurrences": 0, "self_us": 0.0}
            for f, v in _fields(record):
                if f == _HOST_OR_DEVICE:
                    row["host_or_device"] = v.decode("utf-8", "replace")
                elif f == _OP_TYPE:
                    row["op_type"] = v.decode("utf-8", "replace")
                elif f == _OP_NAME:
                    row["op_name"] = v.decode("utf-8", "replace")
                elif f == _OCCURRENCES:
                    row["occurrences"] = int(v)
                elif f == _SELF_US:
                    row["self_us"] = float(v)
            out.append(row)
    return out


def summarize(records: List[Dict[str, Any]], k: int = 10) -> List[Dict[str, Any]]:
    """Self time per op type, largest first: ``[{"op_type", "self_ms", "share", "occurrences"}]``
    (``share`` of the total self time of every op), the first ``k``."""
    total: Dict[str, float] = defaultdict(float)
    count: Dict[str, int] = defaultdict(int)
    for r in records:
        total[r["op_type"]] += r["self_us"]
        count[r["op_type"]] += r["occurrences"]
    all_us = sum(total.values()) or 1.0
    ranked = sorted(total.items(), key=lambda kv: -kv[1])[:k]
    return [{"op_type": op, "self_ms": round(us / 1000.0, 3), "share": round(us / all_us, 4),
             "occurrences": count[op]} for op, us in ranked]


def top_ops(fn: Callable[[], Any], calls: int = 10, k: int = 10) -> List[Dict[str, Any]]:
    """Profiles ``calls`` calls of ``fn`` (warm it up first: tracing would be profiled too).

    Returns:
        :func:`summarize` of the profile's op records.

    Raises:
        RuntimeError: the profiler wrote no trace.
    """
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler

    with tempfile.TemporaryDirectory(prefix="limaml-profile-") as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(calls):
                out = fn()
            tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
        finally:
            tf.profiler.experimental.stop()
        traces = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True),
                        key=os.path.getmtime)
        if not traces:
            raise RuntimeError(f"the TensorFlow profiler wrote no trace into {logdir}")
        data, _ = _pywrap_profiler.xspace_to_tools_data([traces[-1]], "framework_op_stats", {})
        if not data:
            raise RuntimeError("the profiler's framework_op_stats converter returned nothing")
    return summarize(parse_tf_stats(data), k)
