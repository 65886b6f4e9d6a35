"""Task entities (``TaskConfig.entity``): user × genre tasks on hand-made rows.

Expected keys, rows and splits are written out by hand from the rows below (genre multi-hots
whose primary genre is the lowest set bucket, the rule of ``trainer.model.primary_genre``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from components.task_gen import tasks_beam
from limaml.config import ProtocolConfig, TaskConfig
from limaml.data import protocols
from schema import features
from trainer import task_record
from trainer.layout import USER_HASH
from trainer.local_encoder import LocalEncoder
from trainer.tasks import build_tasks, entity_keys

G = 4  # genre buckets of the hand-made multi-hots


def _hot(*buckets: int) -> list:
    row = [0.0] * G
    for b in buckets:
        row[b] = 1.0
    return row


# user a: rows 100..105, user b: rows 106..108, each user in time order.
# row: (user, row id, timestamp, genre buckets)  -> primary genre (lowest set bucket)
ROWS = [
    ("a", 100, 10, (1,)),     # a#1
    ("a", 101, 20, (2,)),     # a#2
    ("a", 102, 30, (1, 3)),   # a#1
    ("a", 103, 40, (2, 3)),   # a#2
    ("a", 104, 50, (1,)),     # a#1
    ("a", 105, 60, (3,)),     # a#3 (one row: no task)
    ("b", 106, 15, (2,)),     # b#2
    ("b", 107, 25, (0, 2)),   # b#0 (one row: no task)
    ("b", 108, 35, (2,)),     # b#2
]


def _table() -> dict:
    return {"user": np.array([r[0] for r in ROWS], dtype=object),
            "row": np.array([r[1] for r in ROWS]),
            features.TIMESTAMP: np.array([r[2] for r in ROWS]),
            features.GENRES: np.array([_hot(*r[3]) for r in ROWS], dtype=np.float32)}


CFG = TaskConfig(support_size=2, query_size=1, min_support=1, min_query=1, max_tasks_per_user=10,
                 first_split="min_support", entity="user_x_genre")


def test_entity_keys_use_the_primary_genre():
    keys, genres = entity_keys(_table(), "user", "user_x_genre")
    assert list(keys) == ["a#1", "a#2", "a#1", "a#2", "a#1", "a#3", "b#2", "b#0", "b#2"]
    np.testing.assert_array_equal(genres, [1, 2, 1, 2, 1, 3, 2, 0, 2])
    users, none = entity_keys(_table(), "user", "user")
    assert list(users) == [r[0] for r in ROWS] and none is None


def test_user_x_genre_tasks_by_hand():
    out = build_tasks(_table(), "user", CFG)
    # a#1 = rows 100, 102, 104: splits 1, 2; a#2 = 101, 103: split 1; b#2 = 106, 108: split 1;
    # a#3 and b#0 have one row (< min_support + min_query).
    assert list(out["entity"]) == ["a#1", "a#1", "a#2", "b#2"]
    assert list(out["user"]) == ["a", "a", "a", "b"]
    np.testing.assert_array_equal(out["split"], [1, 2, 1, 1])
    np.testing.assert_array_equal(out["support"]["row"], [[100, 0], [100, 102], [101, 0], [106, 0]])
    np.testing.assert_array_equal(out["support"]["mask"], [[1, 0], [1, 1], [1, 0], [1, 0]])
    np.testing.assert_array_equal(out["query"]["row"], [[102], [104], [103], [108]])
    np.testing.assert_array_equal(out["query"]["mask"], [[1], [1], [1], [1]])
    # time order inside each entity's support, support strictly before the query
    ts, sm = out["support"][features.TIMESTAMP], out["support"]["mask"] > 0
    qts = out["query"][features.TIMESTAMP]
    for t in range(4):
        assert np.all(np.diff(ts[t][sm[t]]) > 0)
        assert ts[t][sm[t]].max() < qts[t][0]
    # every row of a task has the entity's genre
    for part in ("support", "query"):
        g = np.argmax(out[part][features.GENRES], -1)
        want = np.array([1, 1, 2, 2])[:, None]
        assert np.all((g == want) | (out[part]["mask"] == 0)), part


def test_user_entity_is_unchanged_and_entity_equals_user():
    cfg = TaskConfig(support_size=2, query_size=1, max_tasks_per_user=10, first_split="min_support")
    out = build_tasks(_table(), "user", cfg)
    # user a rows 100..105: splits 1..5; user b 106..108: splits 1, 2
    assert list(out["entity"]) == list(out["user"]) == ["a"] * 5 + ["b"] * 2
    np.testing.assert_array_equal(out["query"]["row"][:, 0], [101, 102, 103, 104, 105, 107, 108])


def test_max_tasks_per_user_caps_each_entity_keeping_the_latest():
    cfg = TaskConfig(support_size=2, query_size=1, max_tasks_per_user=1, first_split="min_support",
                     entity="user_x_genre")
    out = build_tasks(_table(), "user", cfg)
    assert list(out["entity"]) == ["a#1", "a#2", "b#2"]
    np.testing.assert_array_equal(out["query"]["row"][:, 0], [104, 103, 108])


def test_task_config_rejects_unknown_entity():
    with pytest.raises(ValueError, match=r"'user_x_item'.*'user'.*'user_x_genre'"):
        TaskConfig(entity="user_x_item")
    assert TaskConfig().entity == "user"


def test_user_x_genre_needs_the_genres_column():
    table = {k: v for k, v in _table().items() if k != features.GENRES}
    with pytest.raises(KeyError, match=features.GENRES):
        build_tasks(table, "user", CFG)


def _frame() -> pd.DataFrame:
    """Three users, 8 rows each, alternating two genres; timestamps 1000 + 10 k + u."""
    genres = ["Comedy", "Drama"]
    rows = []
    for u in range(3):
        for k in range(8):
            rows.append({
                features.USER_ID: f"user{u}", features.ITEM_ID: f"item{k}",
                features.TIMESTAMP: 1000 + 10 * k + u, features.LABEL: k % 2,
                features.RATING: 4.0, features.AGE_BUCKET: "25-34", features.GENDER: "MF"[u % 2],
                features.OCCUPATION: "occ", features.ZIP_PREFIX: "1",
                features.GENRES: genres[(k // 2) % 2], features.RELEASE_YEAR: 1990 + k})
    return pd.DataFrame(rows)


def test_protocol_query_rows_never_enter_entity_tasks():
    frame = _frame()
    # cutoff at 1050: rows k = 5..7 of every user are the protocol's query rows
    split = protocols.apply(frame, ProtocolConfig(name="cutoff", cutoff_ts=1050, horizon_seconds=10 ** 6))
    rows = split.interactions
    query = rows[rows[protocols.ROLE] == "query"]
    assert len(query) == 9
    trainable = rows[rows[protocols.ROLE].isin(protocols.TRAINABLE_ROLES)]
    table = LocalEncoder(user_id_buckets=16).fit(trainable).encode(trainable)
    out = build_tasks(table, features.USER_ID, TaskConfig(support_size=4, query_size=2,
                                                           first_split="min_support",
                                                           entity="user_x_genre"))
    assert len(out["entity"]) > 0
    query_ts = set(zip(query[features.USER_ID], query[features.TIMESTAMP]))
    for t, user in enumerate(out["user"]):
        for part in ("support", "query"):
            valid = out[part]["mask"][t] > 0
            for ts in out[part][features.TIMESTAMP][t][valid]:
                assert (user, int(ts)) not in query_ts, (part, user, ts)
        s_ts = out["support"][features.TIMESTAMP][t][out["support"]["mask"][t] > 0]
        q_ts = out["query"][features.TIMESTAMP][t][out["query"]["mask"][t] > 0]
        assert s_ts.max() < q_ts.min()


def test_taskgen_records_carry_entity_keys_and_split_by_user():
    frame = _frame()
    table = LocalEncoder(user_id_buckets=16).fit(frame).encode(frame)
    users = []
    for u in np.unique(table[features.USER_ID]):
        idx = np.flatnonzero(table[features.USER_ID] == u)
        users.append((u, [{k: v[i] for k, v in table.items()} for i in idx]))
    cfg = TaskConfig(support_size=3, query_size=2, first_split="min_support", entity="user_x_genre")
    out = list(tasks_beam.build_records(users, cfg))
    parsed = task_record.parse_tasks(tf.constant([rec for _, rec in out]), cfg)
    keys = [k.decode() for k in parsed[features.USER_ID].numpy()]
    comedy, drama = tf.strings.to_hash_bucket_fast(["Comedy", "Drama"], 64).numpy()
    # each user: 4 Comedy rows (k = 0, 1, 4, 5), 4 Drama rows (k = 2, 3, 6, 7); an entity of 4
    # rows with min_support 1 and Q = 2 is cut at positions 1 and 3: 2 tasks per entity
    want = sorted(f"user{u}#{g}" for u in range(3) for g in (comedy, drama) for _ in range(2))
    assert sorted(keys) == want
    hashes = dict(zip(table[features.USER_ID], table[USER_HASH]))
    for key, h in zip(keys, parsed[USER_HASH].numpy()):
        assert h == hashes[key.split("#")[0]]
    split_of = {}
    for (split, _), key in zip(out, keys):
        assert split_of.setdefault(key.split("#")[0], split) == split


def test_user_x_genre_on_an_empty_table():
    out = build_tasks({k: v[:0] for k, v in _table().items()}, "user", CFG)
    assert out["support"]["row"].shape == (0, 2) and out["query"]["row"].shape == (0, 1)
    assert len(out["entity"]) == 0 and len(out["user"]) == 0
