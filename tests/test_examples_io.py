"""Row stacking shared by TaskGen and meta-embedding generation (``examples_io.stack_users``)."""
import numpy as np
import pytest

from components.common.examples_io import stack_users


def _users():
    a = [{"x": np.float32(1.0), "v": np.array([1, 2]), "id": b"a"},
         {"x": np.float32(2.0), "v": np.array([3, 4]), "id": b"a"}]
    b = [{"x": np.float32(5.0), "v": np.array([5, 6]), "id": b"b"}]
    return [("ua", a), ("ub", b)]


def test_stack_users_all_columns_user_then_time_order():
    keys, table = stack_users(_users())
    assert keys.dtype == object and list(keys) == ["ua", "ua", "ub"]
    assert sorted(table) == ["id", "v", "x"]
    np.testing.assert_array_equal(table["x"], np.array([1.0, 2.0, 5.0], np.float32))
    assert table["x"].dtype == np.float32
    np.testing.assert_array_equal(table["v"], np.array([[1, 2], [3, 4], [5, 6]]))
    assert list(table["id"]) == [b"a", b"a", b"b"]


def test_stack_users_selected_columns_and_missing_column_named():
    keys, table = stack_users(_users(), ["v"])
    assert list(table) == ["v"] and table["v"].shape == (3, 2)
    with pytest.raises(KeyError, match=r"\['label'\].*they have \['id', 'v', 'x'\]"):
        stack_users(_users(), ["x", "label"])
    keys, table = stack_users([])
    assert keys.shape == (0,) and table == {}
