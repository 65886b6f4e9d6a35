"""serving/predict_wire.py: the concatenated bytes of a batch parse to the very PredictRequest the
message API builds for the same rows (serving.predict_request.raw_request)."""
from __future__ import annotations

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from schema import features as F
from serving import predict_request as PR
from serving.predict_wire import batch_request_bytes, encode_rows

INPUTS = {F.ITEM_ID: types_pb2.DT_STRING, F.GENRES: types_pb2.DT_STRING,
          "user_id": types_pb2.DT_STRING, "gender": types_pb2.DT_STRING,
          F.RELEASE_YEAR: types_pb2.DT_INT64, "f32": types_pb2.DT_FLOAT,
          "f64": types_pb2.DT_DOUBLE, "i32": types_pb2.DT_INT32}


def _part(rng, n, width, per_row):
    cols = {
        F.ITEM_ID: [f"item-{rng.integers(1 << 40)}".encode() for _ in range(n)],
        F.GENRES: [("é|" * int(rng.integers(0, 90)) + "Drama").encode("utf-8") if i % 3 else b""
                   for i in range(n)],  # empty, short and >127-byte strings
        "user_id": [f"user-{n}".encode()] * n,  # one value on every row: encoded once
        "gender": np.array([b""] * n, dtype=object),  # as the item cache holds strings
        F.RELEASE_YEAR: rng.integers(-(1 << 62), 1 << 62, size=n),
        "f32": rng.normal(size=n).astype(np.float32),
        "f64": rng.normal(size=n),
        "i32": rng.integers(-(1 << 30), 1 << 30, size=n).astype(np.int32),
    }
    emb = rng.normal(size=(n, width) if per_row else width).astype(np.float32)
    return cols, emb


@pytest.mark.parametrize("sizes,per_row", [((1,), False), ((3, 200, 1), False), ((5, 130), True)])
def test_batch_bytes_parse_to_the_message_api_request(sizes, per_row):
    rng = np.random.default_rng(len(sizes))
    parts = [_part(rng, n, 6, per_row) for n in sizes]
    got = predict_pb2.PredictRequest.FromString(batch_request_bytes(
        "limaml", 300, INPUTS, [encode_rows(INPUTS, c, e, len(c[F.ITEM_ID])) for c, e in parts]))
    total = sum(sizes)
    columns = {name: ([v for c, _ in parts for v in c[name]] if dtype == types_pb2.DT_STRING
                      else np.concatenate([c[name] for c, _ in parts]))
               for name, dtype in INPUTS.items()}
    emb = np.concatenate([np.broadcast_to(e, (len(c[F.ITEM_ID]), 6)) for c, e in parts])
    want = PR.raw_request("limaml", 300, INPUTS, columns, emb, total)
    assert got == want
    assert list(got.inputs[F.META_EMBEDDING].tensor_shape.dim[i].size for i in range(2)) == [total, 6]


def test_mismatched_rows_and_widths_are_refused():
    rng = np.random.default_rng(0)
    cols, emb = _part(rng, 4, 3, False)
    with pytest.raises(ValueError, match="5 rows"):
        encode_rows(INPUTS, cols, rng.normal(size=(5, 3)).astype(np.float32), 4)
    with pytest.raises(ValueError, match="4 values for 3 rows"):
        encode_rows(INPUTS, cols, emb, 3)
    a = encode_rows(INPUTS, cols, emb, 4)
    b = encode_rows(INPUTS, cols, np.zeros(2, np.float32), 4)
    with pytest.raises(ValueError, match="widths"):
        batch_request_bytes("m", 1, INPUTS, [a, b])


def test_string_entries_are_the_message_apis_bytes():
    """Cached entries join to what TensorProto(string_val=...) serializes: empty, one-byte and
    two-byte lengths, non-ASCII, str as UTF-8, repeats; also once the cache started over."""
    from tensorflow.core.framework import tensor_pb2

    from serving.predict_wire import StringEntries

    values = [b"", b"a", "Ωmega".encode(), b"x" * 127, b"y" * 128, b"z" * 300, b"a", b""]
    want = tensor_pb2.TensorProto(string_val=values).SerializeToString()
    entries = StringEntries(max_entries=3)
    assert entries.join(values) == want
    assert entries.join(values) == want  # from the cache (what fits)
    assert len(entries._entries) <= 3
    assert entries.join(["Ωmega", "b"]) == tensor_pb2.TensorProto(
        string_val=["Ωmega".encode(), b"b"]).SerializeToString()
    with pytest.raises(TypeError, match="bytes or str, got int"):
        entries.join([b"a", 7])
    with pytest.raises(ValueError, match="max_entries=0"):
        StringEntries(0)
