"""Refresh's encoder (components/meta_embedding_gen/refresh_encoding.py) on a Transform graph
with an output of two raw columns (a feature cross), which it must transform row by row.

Expected values: the ``tft_beam`` run's own transformed rows (not refresh's encoder). The
pipeline's own graph (every output of one column) is covered in tests/test_refresh.py.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from components.meta_embedding_gen import refresh_encoding
from schema import features as F


def _crossing_fn(inputs):
    import tensorflow as tf
    import tensorflow_transform as tft

    return {
        F.ITEM_ID: tft.compute_and_apply_vocabulary(inputs[F.ITEM_ID], vocab_filename="item"),
        "gender_x_item": tft.compute_and_apply_vocabulary(
            tf.strings.join([inputs[F.GENDER], inputs[F.ITEM_ID]], "|"), vocab_filename="cross"),
        F.LABEL: tf.cast(inputs[F.LABEL], tf.float32) * 2.0,
        F.USER_ID: inputs[F.USER_ID],
    }


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    rng = np.random.default_rng(5)
    n = 200
    frame = pd.DataFrame({
        F.USER_ID: [f"u{u}" for u in rng.integers(0, 20, n)],
        F.ITEM_ID: [f"i{i}" for i in rng.integers(0, 9, n)],
        F.GENDER: rng.choice(["F", "M", "é"], n).astype(object),
        F.TIMESTAMP: rng.integers(0, 1000, n),
        F.LABEL: rng.integers(0, 2, n),
    })
    spec = {F.USER_ID: tf.io.FixedLenFeature([], tf.string),
            F.ITEM_ID: tf.io.FixedLenFeature([], tf.string),
            F.GENDER: tf.io.FixedLenFeature([], tf.string),
            F.TIMESTAMP: tf.io.FixedLenFeature([], tf.int64),
            F.LABEL: tf.io.FixedLenFeature([], tf.int64)}
    meta = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    raw = [{k: (v.encode() if isinstance(v, str) else v) for k, v in r.items()}
           for r in frame.to_dict("records")]
    root = str(tmp_path_factory.mktemp("crossing"))
    tdir = os.path.join(root, "transform")
    with tft_beam.Context(temp_dir=os.path.join(root, "tmp")):
        (rows, _), transform_fn = (raw, meta) | tft_beam.AnalyzeAndTransformDataset(_crossing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(tdir)
    metadata_io.write_metadata(meta, os.path.join(tdir, tft.TFTransformOutput.RAW_METADATA_DIR))
    expected = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return frame, tdir, expected


# packed 5: item ids (9 distinct) go alone, labels packed; chunk 4: item ids over three calls;
# categorical: string columns as read_prepared(categorical=True) gives them (an unused first category)
@pytest.mark.parametrize("packed,chunk,categorical", [(8192, 64, False), (5, 4, False),
                                                      (8192, 64, True), (5, 4, True)])
def test_an_output_of_two_columns_is_transformed_row_by_row(crossing, monkeypatch, packed, chunk,
                                                            categorical):
    frame, tdir, expected = crossing
    monkeypatch.setattr(refresh_encoding, "PACKED_DISTINCT", packed)
    if categorical:
        frame = frame.copy()
        for name in (F.USER_ID, F.ITEM_ID, F.GENDER):
            frame[name] = pd.Categorical(frame[name], categories=[""] + sorted(set(frame[name])))
    row_calls = []
    rows = refresh_encoding._transform_rows
    monkeypatch.setattr(refresh_encoding, "_transform_rows",
                        lambda *a, **k: row_calls.append(tuple(a[3])) or rows(*a, **k))
    got = refresh_encoding.encode_with_transform(frame, tdir, chunk_rows=chunk)
    assert row_calls == [("gender_x_item",)]  # the cross only; the rest column by column
    assert set(got) == {F.ITEM_ID, "gender_x_item", F.LABEL, F.USER_ID, F.TIMESTAMP}
    for name in (F.ITEM_ID, "gender_x_item", F.LABEL):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert len(np.unique(got["gender_x_item"])) > len(np.unique(got[F.ITEM_ID]))  # a real cross
    assert got[F.USER_ID].dtype == object and isinstance(got[F.USER_ID][0], str)
    np.testing.assert_array_equal(got[F.USER_ID], frame[F.USER_ID].to_numpy())
    np.testing.assert_array_equal(got[F.TIMESTAMP], frame[F.TIMESTAMP].to_numpy())


def test_single_column_outputs_names_what_each_column_determines(crossing):
    import tensorflow_transform as tft

    frame, tdir, _ = crossing
    output = tft.TFTransformOutput(tdir)
    alone, every = refresh_encoding.single_column_outputs(
        refresh_encoding.load_transform(output), frame, refresh_encoding.raw_spec_of(output))
    assert alone[F.ITEM_ID] == (F.ITEM_ID,) and alone[F.LABEL] == (F.LABEL,)
    assert alone[F.GENDER] == () and alone[F.TIMESTAMP] == ()
    assert "gender_x_item" in every and all("gender_x_item" not in v for v in alone.values())


def test_the_loaders_pruning_answers_as_feeding_one_row_does(crossing):
    import tensorflow_transform as tft

    frame, tdir, _ = crossing
    output = tft.TFTransformOutput(tdir)
    graph = refresh_encoding.load_transform(output)
    spec = refresh_encoding.raw_spec_of(output)
    assert graph.outputs_from([F.GENDER, F.ITEM_ID]) == {F.ITEM_ID, "gender_x_item"}
    fed_one_row = refresh_encoding.single_column_outputs(lambda feed: graph(feed), frame, spec)
    assert refresh_encoding.single_column_outputs(graph, frame, spec) == fed_one_row


@pytest.mark.parametrize("values", [
    ["a", None, "b", float("nan"), "a", None],   # missing values: None and NaN stay apart
    ["1", 1, "é", 1, "1"],                       # distinct objects with the same string
])
def test_distinct_values_give_back_the_converted_column(values):
    import tensorflow as tf

    col = np.array(values, dtype=object)
    feat = tf.io.VarLenFeature(tf.string)
    codes, uniques = refresh_encoding._distinct(col, feat)
    np.testing.assert_array_equal(uniques[codes], col.astype(str))
    assert len(set(uniques.tolist())) == len(set(col.astype(str).tolist()))


def test_compact_keeps_values_and_narrows_only_what_fits():
    from components.meta_embedding_gen.compact_columns import compact

    multi_hot = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
    got = compact(multi_hot)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, multi_hot)
    for ids, dtype in (([0, 255], np.uint8), ([-1, 5], np.int16), ([0, 256], np.int16),
                       ([0, 32768], np.int32), ([-2**31, 2**31 - 1], np.int32)):
        got = compact(np.array(ids, np.int64))
        assert got.dtype == dtype, ids
        np.testing.assert_array_equal(got, ids)
    for kept in (np.array([[0.0, 0.5]], np.float32),      # not 0/1
                 np.array([[0.0, 2.0]], np.float32),      # an integer, but not 0/1
                 np.array([[-0.0, 1.0]], np.float32),     # uint8 would lose the sign of zero
                 np.array([[0.0, np.nan]], np.float64),
                 np.array([0.0, 1.0], np.float32),        # a vector of floats
                 np.array([0, 2**31], np.int64),          # past int32
                 np.array([1, 300], np.int16),            # needs its int16
                 np.array(["a"], object), np.zeros((0, 3), np.int64)):
        assert compact(kept) is kept
