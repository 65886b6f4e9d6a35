"""ItemCache.from_examples on ExampleGen-shaped folders, including one missing an item feature."""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from components.protocol_example_gen.examples import to_example
from serving.item_cache import ItemCache


def write_examples(folder: str, rows) -> str:
    os.makedirs(os.path.join(folder, "Split-train"), exist_ok=True)
    path = os.path.join(folder, "Split-train", "data.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for row in rows:
            w.write(to_example(row).SerializeToString())
    return folder


def test_items_come_with_their_first_rows_features(tmp_path):
    rows = [{"item_id": "i1", "genres": "Drama", "release_year": 1990, "user_id": "u1"},
            {"item_id": "i2", "genres": "Comedy|Drama", "release_year": 2001, "user_id": "u1"},
            {"item_id": "i1", "genres": "Drama", "release_year": 1990, "user_id": "u2"}]
    cache = ItemCache.from_examples(write_examples(str(tmp_path / "ok"), rows), batch_size=2)
    assert len(cache) == 2
    found, missing = cache.rows(["i2", "i1", "i9"])
    assert missing == [2]
    cols = cache.columns(found[:2])
    assert [g.decode() if isinstance(g, bytes) else g for g in cols["genres"]] == ["Comedy|Drama", "Drama"]
    np.testing.assert_array_equal(cols["release_year"], [2001, 1990])


def test_examples_without_an_item_feature_give_an_empty_cache_not_a_crash(tmp_path):
    # a run the anomaly gate stopped: its rows lack genres altogether
    rows = [{"item_id": f"i{k}", "release_year": 1990 + k, "user_id": "u1"} for k in range(5)]
    cache = ItemCache.from_examples(write_examples(str(tmp_path / "no-genres"), rows))
    assert len(cache) == 0


def test_a_column_with_a_missing_value_is_seen_wherever_it_is():
    import numpy as np

    from serving.ranker_items import _no_none

    assert _no_none(["a", "b", 0, 0.0, ""]) and _no_none([]) and _no_none(np.arange(3))
    assert not _no_none(["a", None, "c"]) and not _no_none([None]) and not _no_none([1, 2, None])
    assert not _no_none(np.array(["a", None], dtype=object))
    assert _no_none(np.array(["a", "b"], dtype=object))
