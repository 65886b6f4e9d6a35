"""trainer/example_wire.py and the task records built with it: the hand-written wire format
parses (protobuf, tf.io) to exactly the Examples the message API builds."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from limaml.config import TaskConfig
from trainer import example_wire as W
from trainer import task_record


def _reference(name_kind_values, r):
    """Record r built with the protobuf message API (the independent reference)."""
    feats = {}
    for name, kind, values in name_kind_values:
        flat = np.asarray(values[r], dtype=object if kind == W.BYTES else None).reshape(-1)
        if kind == W.INT64:
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in flat]))
        elif kind == W.FLOAT:
            feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in flat]))
        else:
            feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[v if isinstance(v, bytes) else v.encode("utf-8") for v in flat]))
    return tf.train.Example(features=tf.train.Features(feature=feats))


def test_varints_match_hand_encoded_bytes():
    data, offsets = W.varints(np.array([[0, 1], [127, 128], [300, -1]]))
    rows = [data[offsets[r]:offsets[r + 1]].tobytes() for r in range(3)]
    assert rows == [b"\x00\x01", b"\x7f\x80\x01", b"\xac\x02" + b"\xff" * 9 + b"\x01"]


def test_records_parse_to_the_message_apis_examples():
    rng = np.random.RandomState(0)
    n = 7
    ints = rng.randint(-2**40, 2**40, size=(n, 5)).astype(np.int64)
    ints[0] = [0, -1, 2**63 - 1, -2**63, 127]
    floats = rng.randn(n, 3, 4).astype(np.float32)
    floats[1, 0] = [np.inf, -np.inf, -0.0, 1e-45]
    names = np.array([["ü-user"], [b"raw"], [""], ["a"], ["b"], ["c"], ["d"]], dtype=object)
    columns = [("support/ints", W.INT64, ints), ("floats", W.FLOAT, floats),
               ("user_id", W.BYTES, names), ("empty", W.FLOAT, np.zeros((n, 0), np.float32))]
    records = W.serialize_examples(columns)
    assert len(records) == n
    for r, rec in enumerate(records):
        assert tf.train.Example.FromString(rec) == _reference(columns, r), r
    spec = {"support/ints": tf.io.FixedLenFeature([5], tf.int64),
            "floats": tf.io.FixedLenFeature([12], tf.float32),
            "user_id": tf.io.FixedLenFeature([], tf.string)}
    parsed = tf.io.parse_example(records, spec)
    np.testing.assert_array_equal(parsed["support/ints"].numpy(), ints)
    np.testing.assert_array_equal(parsed["floats"].numpy(), floats.reshape(n, 12))
    assert parsed["user_id"].numpy()[0].decode("utf-8") == "ü-user"


def test_task_records_round_trip_through_parse_tasks():
    cfg = TaskConfig(support_size=4, query_size=2)
    rng = np.random.RandomState(1)
    tasks = {}
    for part, size in (("support", 4), ("query", 2)):
        d = {}
        for name, dtype, width in task_record._columns():
            shape = (3, size, width) if width > 1 else (3, size)
            d[name] = (rng.randint(0, 10**9, size=shape) if dtype == tf.int64
                       else rng.rand(*shape).astype(np.float32))
        d["mask"] = (rng.rand(3, size) < 0.7).astype(np.float32)
        tasks[part] = d
    records = task_record.encode_tasks(tasks, ["u0", "u1", "ü2"], [11, 12, 13])
    got = task_record.parse_tasks(tf.constant(records), cfg)
    for part in ("support", "query"):
        for name, value in tasks[part].items():
            np.testing.assert_array_equal(got[part][name].numpy(), value, err_msg=f"{part}/{name}")
    assert [u.decode("utf-8") for u in got["user_id"].numpy()] == ["u0", "u1", "ü2"]
    np.testing.assert_array_equal(got["user_hash"].numpy(), [11, 12, 13])
    one = task_record.encode_task("u1", 12, {k: v[1] for k, v in tasks["support"].items()},
                                  {k: v[1] for k, v in tasks["query"].items()})
    assert one == records[1]
    with pytest.raises(KeyError, match="lacks column 'mask'"):
        task_record.encode_tasks({"support": {k: v for k, v in tasks["support"].items() if k != "mask"},
                                  "query": tasks["query"]}, ["u0", "u1", "u2"], [1, 2, 3])


def test_bad_columns_are_named():
    with pytest.raises(ValueError, match="'b' has 2 records"):
        W.serialize_examples([("a", W.INT64, np.zeros((3, 1))), ("b", W.INT64, np.zeros((2, 1)))])
    with pytest.raises(ValueError, match="kind 'double'"):
        W.serialize_examples([("a", "double", np.zeros((3, 1)))])
