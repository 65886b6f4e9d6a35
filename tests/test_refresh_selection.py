"""Refresh's selection (components/meta_embedding_gen/refresh_selection.py): ``last_k`` and
``changed_users``, on object and categorical string columns.

Expected rows come from a plain-Python reference (per user: rows sorted by (time, item) with
ties in frame order, then the last k), on frames planted with exact ties and out of order.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.meta_embedding_gen.refresh_selection import changed_users, last_k
from schema import features as F


def _frame(rows) -> pd.DataFrame:
    """``rows``: (user, timestamp, item, marker) tuples; ``label`` carries the marker."""
    return pd.DataFrame(rows, columns=[F.USER_ID, F.TIMESTAMP, F.ITEM_ID, F.LABEL])


def _reference(frame: pd.DataFrame, users, k: int) -> list:
    """Markers of the selected rows, in output order, by hand."""
    out = []
    records = list(frame.itertuples(index=False))
    for user in sorted(set(users) & set(frame[F.USER_ID])):
        mine = [(r.timestamp, r.item_id, i, r.label) for i, r in enumerate(records) if r.user_id == user]
        mine.sort(key=lambda t: (t[0], t[1], t[2]))  # position last: ties keep frame order
        out.extend(t[3] for t in mine[-k:])
    return out


def test_last_k_orders_by_user_time_item_and_keeps_ties_in_frame_order():
    # out of order, two exact (user, time, item) ties, a user not asked for, a user with < k rows
    frame = _frame([("u2", 5, "b", 0), ("u1", 9, "a", 1), ("u2", 5, "a", 2), ("u1", 3, "z", 3),
                    ("u3", 1, "a", 4), ("u2", 7, "c", 5), ("u2", 5, "b", 6), ("u1", 9, "a", 7),
                    ("u2", 2, "a", 8), ("u1", 1, "a", 9)])
    got = last_k(frame, np.array(["u1", "u2"], dtype=object), 3)
    assert got[F.LABEL].tolist() == _reference(frame, ["u1", "u2"], 3) == [3, 1, 7, 0, 6, 5]
    assert got.index.tolist() == list(range(6))
    assert list(got.columns) == list(frame.columns)


def test_last_k_on_sorted_frame_matches_the_reference():
    """Prepared data is already sorted (the no-sort path); random users, k and ties."""
    rng = np.random.default_rng(3)
    n = 400
    frame = _frame(list(zip([f"u{u:02d}" for u in rng.integers(0, 25, n)], rng.integers(0, 30, n),
                            [f"i{i}" for i in rng.integers(0, 6, n)], range(n))))
    ordered = frame.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable").reset_index(drop=True)
    users = np.array(sorted(set(frame[F.USER_ID]))[::2], dtype=object)
    for k in (1, 4, 50):
        assert last_k(ordered, users, k)[F.LABEL].tolist() == _reference(ordered, users, k)
        assert last_k(frame, users, k)[F.LABEL].tolist() == _reference(frame, users, k)


def _categorical(frame: pd.DataFrame, sorted_categories: bool) -> pd.DataFrame:
    """The string columns as ``Categorical`` (categories in string order, or reversed)."""
    out = frame.copy()
    for name in (F.USER_ID, F.ITEM_ID):
        cats = sorted(set(frame[name].dropna()), reverse=not sorted_categories)
        out[name] = pd.Categorical(frame[name], categories=cats)
    return out


@pytest.mark.parametrize("sorted_categories", [True, False])
def test_categorical_columns_select_what_object_columns_do(sorted_categories):
    """``read_prepared(categorical=True)`` frames (codes in string order) and categories in any
    other order: the same rows as the reference on the object frame; changed users sorted."""
    rng = np.random.default_rng(4)
    n = 300
    frame = _frame(list(zip([f"u{u}" for u in rng.integers(0, 30, n)], rng.integers(0, 20, n),
                            [f"i{i}" for i in rng.integers(0, 12, n)], range(n))))
    cat = _categorical(frame, sorted_categories)
    users = np.array(sorted(set(frame[F.USER_ID]))[1::2], dtype=object)
    for k in (1, 3, 40):
        assert last_k(cat, users, k)[F.LABEL].tolist() == _reference(frame, users, k)
    ordered = cat.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable")
    for k in (2, 40):
        plain = ordered.astype({F.USER_ID: object, F.ITEM_ID: object})
        assert last_k(ordered, users, k)[F.LABEL].tolist() == _reference(plain, users, k)
    subset = cat[cat[F.USER_ID].isin(users)]  # unobserved categories stay in the dtype
    assert changed_users(subset, None).tolist() == sorted(users.tolist())


def test_a_missing_item_id_in_a_categorical_column_sorts_as_in_an_object_one():
    frame = _frame([("u1", 1, "b", 0), ("u1", 1, None, 1), ("u1", 1, "a", 2), ("u2", 4, None, 3)])
    users = np.array(["u1", "u2"], dtype=object)
    want = last_k(frame, users, 2)[F.LABEL].tolist()
    assert last_k(_categorical(frame, True), users, 2)[F.LABEL].tolist() == want == [0, 1, 3]


def test_last_k_rejects_k_below_one():
    with pytest.raises(ValueError, match="k must be >= 1"):
        last_k(_frame([("u", 1, "a", 0)]), np.array(["u"], dtype=object), 0)
