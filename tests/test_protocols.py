"""Evaluation protocols: cohorts, budget (stratified history sizes) and cutoff, checked by hand."""
import numpy as np
import pandas as pd
import pytest

from limaml.config import ProtocolConfig
from limaml.data import protocols
from schema import features as F
from tests.conftest_data import ml100k_frame


def test_cohort_names_and_assignment():
    edges = (0, 1, 5, 20, 100)
    assert protocols.cohort_names(edges) == ["0", "1-4", "5-19", "20-99", "100+"]
    got = protocols.cohort_of(np.array([0, 1, 4, 5, 19, 20, 99, 100, 5000]), edges)
    assert list(got) == ["0", "1-4", "1-4", "5-19", "5-19", "20-99", "20-99", "100+", "100+"]
    assert protocols.cohort_names((0, 3, 10)) == ["0-2", "3-9", "10+"]


def test_bad_cohort_edges_rejected():
    with pytest.raises(ValueError, match="cohort_edges"):
        ProtocolConfig(cohort_edges=(1, 5, 20))
    with pytest.raises(ValueError, match="protocol 'weekly'"):
        ProtocolConfig(name="weekly")


def _log(rows):
    frame = pd.DataFrame(rows, columns=[F.USER_ID, F.ITEM_ID, F.TIMESTAMP, F.LABEL])
    return frame


def test_cutoff_roles_by_hand():
    frame = _log([
        ("a", "i1", 10, 1), ("a", "i2", 20, 0), ("a", "i3", 35, 1), ("a", "i4", 80, 0),
        ("b", "i1", 31, 0),
        ("c", "i2", 5, 1),
    ])
    split = protocols.apply_cutoff(frame, ProtocolConfig(name="cutoff", cutoff_ts=30, horizon_seconds=40))
    roles = dict(zip(zip(split.interactions[F.USER_ID], split.interactions[F.ITEM_ID]),
                     split.interactions[protocols.ROLE]))
    assert roles == {("a", "i1"): "history", ("a", "i2"): "history", ("a", "i3"): "query",
                     ("a", "i4"): "unused", ("b", "i1"): "query", ("c", "i2"): "history"}
    users = split.users.set_index(F.USER_ID)
    assert list(users.index) == ["a", "b"]  # c has no query interaction: not evaluated
    assert (users.loc["a", "history_size"], users.loc["a", protocols.COHORT]) == (2, "1-4")
    assert (users.loc["b", "history_size"], users.loc["b", protocols.COHORT]) == (0, "0")


@pytest.fixture(scope="module")
def ml100k_split():
    frame = ml100k_frame()
    return protocols.apply(frame, ProtocolConfig(name="budget", horizon=20))


def test_budget_history_is_first_k_and_query_next(ml100k_split):
    inter = ml100k_split.interactions
    users = ml100k_split.users.set_index(F.USER_ID)
    for uid in users.index[:60]:
        rows = inter[inter[F.USER_ID] == uid].sort_values([F.TIMESTAMP, F.ITEM_ID], kind="stable")
        k, q = users.loc[uid, "history_size"], users.loc[uid, "query_size"]
        expected = ["history"] * k + ["query"] * q + ["unused"] * (len(rows) - k - q)
        assert list(rows[protocols.ROLE]) == expected
        assert q == min(20, len(rows) - k) and q >= 1


def test_budget_cohorts_are_stratified_and_consistent(ml100k_split):
    users = ml100k_split.users
    table = ml100k_split.cohort_table()
    assert list(table.index) == ["0", "1-4", "5-19", "20-99", "100+"]
    # ~20% of 943 users are evaluated, spread evenly over the five cohorts.
    assert 150 <= table["users"].sum() <= 230
    assert table["users"].max() - table["users"].min() <= 6
    expected = protocols.cohort_of(users["history_size"].to_numpy(), (0, 1, 5, 20, 100))
    assert (users[protocols.COHORT].to_numpy() == expected).all()
    # Training users are never evaluation users, and nothing of an evaluated user is 'train'.
    evaluated = set(users[F.USER_ID])
    train_users = set(ml100k_split.interactions.loc[ml100k_split.interactions[protocols.ROLE] == "train", F.USER_ID])
    assert not evaluated & train_users


def test_budget_split_is_stable():
    frame = _log([(f"u{i}", f"i{j}", j, j % 2) for i in range(300) for j in range(30)])
    a = protocols.apply_budget(frame, ProtocolConfig())
    b = protocols.apply_budget(frame.sample(frac=1.0, random_state=3), ProtocolConfig())
    pd.testing.assert_frame_equal(a.users, b.users)
    c = protocols.apply_budget(frame, ProtocolConfig(seed=1))
    assert set(c.users[F.USER_ID]) != set(a.users[F.USER_ID])
