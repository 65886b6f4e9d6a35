"""TaskGen's Beam path (inputs.ReadUserBatchesFromExamples + tasks_beam.BuildTasksFromBatches).

Examples are written shuffled over two files; the pipeline must give the task records (their
content, per split) that ``tasks_beam.build_records`` gives for the same users grouped and
time-ordered by hand, whatever the buckets and the users per vectorised call.
"""
from __future__ import annotations

import os

import apache_beam as beam
import numpy as np
import pandas as pd
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from components.meta_embedding_gen.inputs import ReadUserBatchesFromExamples
from components.task_gen import tasks_beam
from limaml.config import TaskConfig
from schema import features as F
from trainer.local_encoder import LocalEncoder


def _frame() -> pd.DataFrame:
    """Five users with 1, 3, 7, 12 and 20 rows; distinct timestamps within a user."""
    rng = np.random.default_rng(3)
    rows = []
    for u, n in enumerate([1, 3, 7, 12, 20]):
        for k in rng.permutation(n):
            rows.append({F.USER_ID: f"user{u}", F.ITEM_ID: f"item{int(rng.integers(9))}",
                         F.TIMESTAMP: 1000 + 10 * int(k) + u, F.LABEL: int(rng.integers(2)),
                         F.RATING: 4.0, F.AGE_BUCKET: "25-34", F.GENDER: "MF"[u % 2],
                         F.OCCUPATION: "occ", F.ZIP_PREFIX: "1", F.GENRES: "Comedy|Drama",
                         F.RELEASE_YEAR: 1990 + int(k)})
    return pd.DataFrame(rows)


def _example(row: dict) -> bytes:
    feats = {}
    for k, v in row.items():
        v = np.asarray(v).reshape(-1)
        if v.dtype == object or v.dtype.kind in "SU":
            feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(x).encode() for x in v]))
        elif v.dtype.kind in "iub":
            feats[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=v.astype(np.int64)))
        else:
            feats[k] = tf.train.Feature(float_list=tf.train.FloatList(value=v.astype(np.float32)))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _spec(table: dict) -> dict:
    spec = {}
    for k, v in table.items():
        v = np.asarray(v)
        dtype = tf.string if v.dtype == object else tf.int64 if v.dtype.kind in "iub" else tf.float32
        spec[k] = tf.io.FixedLenFeature(list(v.shape[1:]), dtype)
    return spec


def _canonical(split_record):
    """``(split, ((feature, values), ...))``: a record's content, independent of the order in
    which protobuf serialises its feature map."""
    split, record = split_record
    feats = tf.train.Example.FromString(record).features.feature
    out = []
    for name in sorted(feats):
        f = feats[name]
        out.append((name, tuple(f.bytes_list.value) + tuple(f.int64_list.value)
                    + tuple(f.float_list.value)))
    return split, tuple(out)


def test_read_user_tables_builds_the_records_of_hand_grouped_users(tmp_path):
    frame = _frame()
    table = LocalEncoder(user_id_buckets=16).fit(frame).encode(frame)
    n = len(table[F.USER_ID])
    rows = [{k: v[i] for k, v in table.items()} for i in range(n)]
    # by hand: users in any order, each user's rows in time order
    users = []
    for u in sorted(set(table[F.USER_ID])):
        mine = sorted((r for r in rows if r[F.USER_ID] == u), key=lambda r: int(r[F.TIMESTAMP]))
        users.append((u, [{**r, F.USER_ID: np.array([u.encode()], dtype=object)} for r in mine]))
    cfg = TaskConfig(support_size=4, query_size=2, min_support=1, first_split="min_support")
    want = list(tasks_beam.build_records(users, cfg))
    assert len(want) > 5 and {s for s, _ in want} <= {"train", "eval"}

    # shuffled over two gzipped files, scalar features as Transform's spec has them
    order = np.random.default_rng(0).permutation(n)
    folder = tmp_path / "Split-train"
    folder.mkdir()
    for part, idx in enumerate(np.array_split(order, 2)):
        with tf.io.TFRecordWriter(os.path.join(folder, f"data-{part}.gz"), options="GZIP") as w:
            for i in idx:
                w.write(_example(rows[i]))
    spec = _spec(table)
    for buckets, users_per_batch in ((1, 512), (3, 512), (1, 2)):
        with beam.Pipeline() as p:
            got = (p
                   | ReadUserBatchesFromExamples(str(folder / "*"), spec, buckets)  # pylint: disable=no-value-for-parameter
                   | tasks_beam.BuildTasksFromBatches(cfg, users_per_batch))  # pylint: disable=no-value-for-parameter
            assert_that(got | beam.Map(_canonical), equal_to([_canonical(w) for w in want]))
