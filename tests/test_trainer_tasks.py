"""Task builder on hand-made histories, task record round trip, local encoder contract."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import tensorflow as tf

from limaml.config import TaskConfig
from schema import features
from trainer import task_record
from trainer.layout import USER_HASH
from trainer.local_encoder import LocalEncoder, hash_strings
from trainer.tasks import build_support_sets, build_tasks


def _table(counts):
    users = np.repeat(np.array([f"u{i}" for i in range(len(counts))], dtype=object), counts)
    n = users.size
    return {"user": users, "row": np.arange(n) + 100, "vec": np.stack([np.arange(n)] * 2, 1)}


def test_build_tasks_on_hand_made_histories():
    # users: u0 n=1 (too short), u1 n=2, u2 n=5, u3 n=12; rows are 100.. in time order
    t = _table([1, 2, 5, 12])
    cfg = TaskConfig(support_size=3, query_size=2, min_support=1, min_query=1,
                     max_tasks_per_user=2, first_split="proportional")
    out = build_tasks(t, "user", cfg)
    assert list(out["user"]) == ["u1", "u2", "u3", "u3"]
    s, sm = out["support"]["row"], out["support"]["mask"]
    q, qm = out["query"]["row"], out["query"]["mask"]
    # u1 starts at row 101: support [101], query [102]
    np.testing.assert_array_equal(s[0], [101, 0, 0])
    np.testing.assert_array_equal(sm[0], [1, 0, 0])
    np.testing.assert_array_equal(q[0], [102, 0])
    np.testing.assert_array_equal(qm[0], [1, 0])
    # u2 rows 103..107: p0 = min(3, 5*3//5) = 3 -> support 103..105, query 106, 107
    np.testing.assert_array_equal(s[1], [103, 104, 105])
    np.testing.assert_array_equal(q[1], [106, 107])
    # u3 rows 108..119 (positions 0..11): splits 3,5,7,9,11 possible; latest two kept (9, 11)
    np.testing.assert_array_equal(out["split"][2:], [9, 11])
    np.testing.assert_array_equal(s[2], [108 + 6, 108 + 7, 108 + 8])
    np.testing.assert_array_equal(q[2], [108 + 9, 108 + 10])
    np.testing.assert_array_equal(s[3], [108 + 8, 108 + 9, 108 + 10])
    np.testing.assert_array_equal(q[3], [108 + 11, 0])
    np.testing.assert_array_equal(qm[3], [1, 0])
    # multi-dimensional columns are gathered row-wise, padding zeroed
    np.testing.assert_array_equal(out["support"]["vec"][0], [[1, 1], [0, 0], [0, 0]])
    # never a query interaction in its own support: support rows < query rows per task
    for i in range(4):
        assert s[i][sm[i] > 0].max() < q[i][qm[i] > 0].min()


def test_build_tasks_min_sizes_and_empty():
    t = _table([4, 6])
    cfg = TaskConfig(support_size=4, query_size=4, min_support=3, min_query=2,
                     max_tasks_per_user=5)
    out = build_tasks(t, "user", cfg)
    assert list(out["user"]) == ["u1"]  # u0 has 4 < 3 + 2
    assert out["support"]["mask"][0].sum() >= 3 and out["query"]["mask"][0].sum() >= 2
    empty = build_tasks({k: v[:0] for k, v in t.items()}, "user", cfg)
    assert empty["support"]["row"].shape == (0, 4)


def test_build_support_sets_takes_latest_k():
    t = _table([2, 5])
    out = build_support_sets(t, "user", 3)
    np.testing.assert_array_equal(out["support"]["row"], [[100, 101, 0], [104, 105, 106]])
    np.testing.assert_array_equal(out["count"], [2, 3])


def _frame(n_users=6, per_user=9, seed=0):
    rng = np.random.RandomState(seed)
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            rows.append({
                features.USER_ID: f"user{u}", features.ITEM_ID: f"item{rng.randint(7)}",
                features.TIMESTAMP: 1000 + 10 * k + u, features.LABEL: int(rng.rand() < 0.5),
                features.RATING: 1.0, features.AGE_BUCKET: "25-34" if u % 2 else "18-24",
                features.GENDER: "MF"[u % 2], features.OCCUPATION: f"occ{u % 3}",
                features.ZIP_PREFIX: str(u % 4), features.GENRES: "Drama|Comedy" if k % 2 else "",
                features.RELEASE_YEAR: 1990 + k,
            })
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed)  # unsorted on purpose


def test_local_encoder_contract():
    frame = _frame()
    enc = LocalEncoder(user_id_buckets=32).fit(frame)
    out = enc.encode(frame)
    assert np.all(np.diff(out[features.TIMESTAMP][out[features.USER_ID] == "user0"]) > 0)
    assert enc.vocab_sizes[features.GENDER] == 3  # F, M + OOV
    unseen = frame.head(1).assign(gender="X")
    assert enc.encode(unseen)[features.GENDER][0] == 2  # OOV id
    g = out[features.GENRES]
    assert g.shape[1] == features.encoding(features.GENRES).buckets
    drama = tf.strings.to_hash_bucket_fast(["Drama", "Comedy"], g.shape[1]).numpy()
    has = np.array([s != "" for s in frame.sort_values(
        [features.USER_ID, features.TIMESTAMP])[features.GENRES]])
    np.testing.assert_array_equal(g[has][:, drama], 1.0)
    assert g[~has].sum() == 0 and set(np.unique(g)) <= {0.0, 1.0}
    y = out[features.RELEASE_YEAR]
    assert abs(y.mean()) < 1e-6 and abs(y.std() - 1) < 1e-5
    np.testing.assert_array_equal(out[USER_HASH], hash_strings(out[features.USER_ID], 32))
    assert out[features.LABEL].dtype == np.float32


def test_task_record_round_trip(tmp_path):
    frame = _frame()
    enc = LocalEncoder(user_id_buckets=32).fit(frame)
    table = enc.encode(frame)
    cfg = TaskConfig(support_size=5, query_size=3, max_tasks_per_user=2)
    keys = [k for k in table if k != features.USER_ID]
    tasks = build_tasks(table, features.USER_ID, cfg, keys)
    recs = task_record.encode_tasks(tasks, tasks["user"], tasks["support"][USER_HASH][:, 0])
    path = os.path.join(str(tmp_path), "tasks.tfrecord.gz")
    task_record.write_tasks(path, recs)
    ds = task_record.task_dataset(path, cfg, batch_size=len(recs), shuffle=False)
    batch = next(iter(ds))
    T = len(recs)
    assert [u.decode() for u in batch["user_id"].numpy()] == list(tasks["user"])
    for part, n in (("support", 5), ("query", 3)):
        got = batch[part]
        for k in list(features.MODEL_FEATURES) + ["label", "timestamp", "mask", USER_HASH]:
            want = tasks[part][k]
            if k == USER_HASH:  # task-level scalar broadcast to positions
                want = np.repeat(tasks["support"][USER_HASH][:, :1], n, axis=1)
            assert got[k].shape[:2] == (T, n), k
            np.testing.assert_allclose(got[k].numpy(), want, rtol=1e-6, err_msg=f"{part}/{k}")
    assert batch["support"][features.GENRES].shape == (T, 5, 64)


def test_build_tasks_min_support_first_split_covers_every_later_interaction():
    t = _table([2, 7])
    cfg = TaskConfig(support_size=3, query_size=2, min_support=1, min_query=1,
                     max_tasks_per_user=10, first_split="min_support")
    out = build_tasks(t, "user", cfg)
    # u0: split 1; u1 (rows 102..108): splits 1, 3, 5 -> queries cover positions 1..6
    np.testing.assert_array_equal(out["split"], [1, 1, 3, 5])
    q = out["query"]["row"][out["query"]["mask"] > 0]
    np.testing.assert_array_equal(np.sort(q), [101, 103, 104, 105, 106, 107, 108])
    np.testing.assert_array_equal(out["support"]["row"][3], [104, 105, 106])
