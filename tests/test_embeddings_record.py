"""EmbeddingBatch validation (embeddings/record.py)."""
from __future__ import annotations

import numpy as np
import pytest

from embeddings.record import (
    COLD_START_USER,
    EmbeddingBatch,
    validate_model_version,
)


def _batch(**kw):
    args = dict(user_ids=["a", "b", "c"], embeddings=np.arange(6, dtype=np.float32).reshape(3, 2),
                model_version="v1", generated_at=123)
    args.update(kw)
    return EmbeddingBatch.create(**args)


def test_valid_batch_converts_dtypes():
    b = _batch(embeddings=np.arange(6, dtype=np.float64).reshape(3, 2), support_size=[1, 2, 3],
               last_interaction_ts=np.array([5, 6, 7], dtype=np.int32))
    assert b.embeddings.dtype == np.float32 and b.embeddings.shape == (3, 2)
    assert b.support_size.dtype == np.int64 and b.last_interaction_ts.dtype == np.int64
    assert b.user_ids.dtype == object and list(b.user_ids) == ["a", "b", "c"]
    assert b.num_users == 3 and b.embedding_dim == 2 and not b.has_cold_start()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embedding_rejected_naming_user(bad):
    emb = np.zeros((3, 2), np.float32)
    emb[1, 1] = bad
    with pytest.raises(ValueError, match=r"non-finite.*'b'") as ei:
        _batch(embeddings=emb)
    assert "'a'" not in str(ei.value) and "'c'" not in str(ei.value)


def test_duplicate_user_ids_rejected():
    with pytest.raises(ValueError, match=r"duplicate user ids.*'a'"):
        _batch(user_ids=["a", "b", "a"])


@pytest.mark.parametrize("kw, pattern", [
    (dict(embeddings=np.zeros(3, np.float32)), r"2-D"),
    (dict(embeddings=np.zeros((4, 2), np.float32)), r"4 rows but user_ids has 3"),
    (dict(support_size=[1, 2]), r"support_size must have shape \(3,\)"),
    (dict(support_size=[1, -2, 3]), r"support_size must be >= 0; user 'b'"),
    (dict(embeddings=np.zeros((3, 0), np.float32)), r"dimension must be >= 1"),
    (dict(model_version="v/1"), r"model_version 'v/1' is invalid"),
    (dict(model_version=""), r"invalid"),
])
def test_shape_and_value_errors(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        _batch(**kw)


def test_non_string_user_id_rejected():
    with pytest.raises(TypeError, match=r"got 7 of type int"):
        _batch(user_ids=["a", 7, "c"])


def test_cold_start_batch_and_versions():
    b = EmbeddingBatch.cold_start(np.array([0.5, -1.0]), "1700000000", 9)
    assert list(b.user_ids) == [COLD_START_USER] and b.has_cold_start()
    np.testing.assert_array_equal(b.embeddings, [[0.5, -1.0]])
    assert validate_model_version("1.2-rc_3") == "1.2-rc_3"
    with pytest.raises(ValueError):
        validate_model_version("model_version=3")
