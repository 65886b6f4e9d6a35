"""MEG's Beam coders (components/meta_embedding_gen/beam_coders.py).

Beam measures sampled elements of every PCollection; without these coders each measured
UserBatch / Arrow table was pickled whole. Checked: round trips, a size estimate that never
encodes, and that the MEG pipeline's PCollections are typed so Beam picks these coders.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest

from components.meta_embedding_gen import beam_coders, generate, inputs
from components.meta_embedding_gen.user_batch import UserBatch
from schema import features as F


def _batch() -> UserBatch:
    return UserBatch.from_grouped({
        F.USER_ID: np.array(["a", "a", "b", "é"], dtype=object),
        F.TIMESTAMP: np.array([1, 2, 1, 5], np.int64),
        F.GENRES: np.arange(12, dtype=np.float32).reshape(4, 3),
    })


def test_user_batch_round_trip_and_size_without_encoding(monkeypatch):
    coder = beam_coders.UserBatchCoder()
    batch = _batch()
    back = coder.decode(coder.encode(batch))
    assert back.offsets.tolist() == batch.offsets.tolist() == [0, 2, 3, 4]
    for k, v in batch.columns.items():
        np.testing.assert_array_equal(back.columns[k], v)
    monkeypatch.setattr(beam_coders.pickle, "dumps", lambda *a, **k: pytest.fail("encoded"))
    # offsets 4 x 8 + user ids 4 x 8 (pointers) + timestamps 4 x 8 + genres 12 x 4
    assert coder.estimate_size(batch) == 32 + 32 + 32 + 48
    assert coder.get_impl().estimate_size(batch) == 144


def test_arrow_table_round_trip_and_size_without_encoding(monkeypatch):
    coder = beam_coders.ArrowTableCoder()
    table = pa.table({"user_id": ["a", "é", None], "x": pa.array([1.5, None, 3.0], pa.float32())})
    assert coder.decode(coder.encode(table)).equals(table)
    monkeypatch.setattr(pa.ipc, "new_stream", lambda *a, **k: pytest.fail("encoded"))
    assert coder.get_impl().estimate_size(table) == table.nbytes > 0


def test_meg_pipeline_collections_use_the_columnar_coders(tmp_path):
    beam_coders.register()
    path = inputs.write_grouped_parquet(_batch(), str(tmp_path), 2)
    p = beam.Pipeline()
    users = p | inputs.ReadUserBatches(path)  # pylint: disable=no-value-for-parameter
    tables = users.producer.inputs[0]  # the row groups read back
    out = users | generate.GenerateEmbeddings(  # pylint: disable=no-value-for-parameter
        lambda: None, 5, "mean", 16)
    assert isinstance(beam.coders.registry.get_coder(users.element_type), beam_coders.UserBatchCoder)
    for pcoll in (tables, out["rows"]):
        assert isinstance(beam.coders.registry.get_coder(pcoll.element_type), beam_coders.ArrowTableCoder)
