"""``canonical.read_prepared(categorical=True)``: the same values as the object read, string
columns as categoricals whose code order is the string order (refresh groups and sorts by codes)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from limaml.data import canonical
from schema import features as F


def test_categorical_read_keeps_values_and_orders_codes_as_strings(tmp_path):
    # Two row groups whose dictionaries list values in first-appearance order, not sorted.
    frame = pd.DataFrame({
        F.USER_ID: ["u9", "u10", "u2", "u9", "u1", "u10"],
        F.ITEM_ID: ["i3", "i1", "i3", "é", "i2", "i1"],
        F.TIMESTAMP: np.array([5, 1, 7, 2, 8, 3], np.int64),
    })
    folder = tmp_path / canonical.INTERACTIONS_DIR
    os.makedirs(folder)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                   str(folder / canonical.INTERACTIONS_FILE), row_group_size=3)

    plain = canonical.read_prepared(str(tmp_path))
    cat = canonical.read_prepared(str(tmp_path), categorical=True)
    assert plain[F.USER_ID].dtype == object
    for name in (F.USER_ID, F.ITEM_ID):
        col = cat[name]
        assert isinstance(col.dtype, pd.CategoricalDtype), name
        assert list(col.cat.categories) == sorted(set(frame[name])), name
        assert col.astype(object).tolist() == frame[name].tolist() == plain[name].tolist()
        codes = col.cat.codes.to_numpy()
        strings = frame[name].to_numpy()
        for i in range(len(frame)):  # code order is string order
            for j in range(len(frame)):
                assert (codes[i] < codes[j]) == (strings[i] < strings[j]), (name, i, j)
    assert cat[F.TIMESTAMP].tolist() == frame[F.TIMESTAMP].tolist()
