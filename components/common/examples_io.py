"""Reading Transform outputs in Beam, grouped per user.

Transformed examples are parsed in batches (``tf.io.parse_example`` on ~1k records) into
column arrays, split by a stable hash of the user id into buckets and regrouped by one shuffle
(:func:`ReadUserTables`): one element per batch and bucket crosses it, never a Python object
per interaction. Each bucket becomes one table grouped by user, time-ordered within each user,
so the numpy/TF kernels run over many users at once. :func:`stack_users` builds the same table
from per-user row lists.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf

from schema import features as F

Row = Dict[str, np.ndarray]


def split_pattern(examples_uri: str, split: str) -> str:
    """File pattern of one split of an Examples artifact."""
    return os.path.join(examples_uri, f"Split-{split}", "*")


def user_buckets(user_ids: np.ndarray, buckets: int) -> np.ndarray:
    """Stable bucket ``[N]`` in ``[0, buckets)`` of each user id (same in every process)."""
    import pandas as pd

    h = pd.util.hash_array(np.asarray(user_ids, dtype=object), categorize=False)
    return (h % np.uint64(buckets)).astype(np.int64)


def buckets_for(pattern: str, bytes_per_bucket: int = 16 << 20, max_buckets: int = 4096) -> int:
    """Shuffle buckets for an input: one per ``bytes_per_bucket`` of (compressed) input files."""
    total = sum(tf.io.gfile.stat(p).length for p in tf.io.gfile.glob(pattern))
    return int(min(max_buckets, max(1, -(-total // bytes_per_bucket))))


class _ParseByBucket(beam.DoFn):
    """A batch of serialized tf.Examples -> ``(bucket, (user key per row [n], {column: [n, ...]}))``
    per user bucket present: the columns ``tf.io.parse_example`` gives, never a dict per row."""

    def __init__(self, feature_spec: Mapping[str, Any], buckets: int) -> None:
        self._spec = dict(feature_spec)
        self._buckets = buckets

    def process(self, batch: List[bytes]) -> Iterable[Tuple[int, Tuple[np.ndarray, Dict[str, np.ndarray]]]]:
        parsed = tf.io.parse_example(tf.constant(batch), self._spec)
        arrays = {k: (v.numpy() if not isinstance(v, tf.SparseTensor) else tf.sparse.to_dense(v).numpy())
                  for k, v in parsed.items()}
        keys = np.array([u.decode() for u in arrays[F.USER_ID].reshape(len(batch), -1)[:, 0]], dtype=object)
        bucket = user_buckets(keys, self._buckets)
        order = np.argsort(bucket, kind="stable")
        cuts = np.flatnonzero(np.diff(bucket[order])) + 1
        for idx in np.split(order, cuts):
            if idx.size:
                yield int(bucket[idx[0]]), (keys[idx], {k: v[idx] for k, v in arrays.items()})


def _bucket_table(item: Tuple[int, Iterable[Tuple[np.ndarray, Dict[str, np.ndarray]]]]
                  ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """One bucket's parts -> its rows grouped by user, in time order within each user (a
    stable sort: rows with equal timestamps keep their arrival order)."""
    parts = list(item[1])
    keys = np.concatenate([p[0] for p in parts])
    table = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    time = np.asarray(table[F.TIMESTAMP]).reshape(len(keys), -1)[:, 0].astype(np.int64)
    order = np.lexsort((time, keys))  # by user, then time; lexsort is stable
    return keys[order], {k: v[order] for k, v in table.items()}


@beam.ptransform_fn
def ReadUserTables(pipeline: beam.Pipeline, pattern: str, feature_spec: Mapping[str, Any],
                   buckets: int) -> beam.PCollection:  # pylint: disable=invalid-name
    """Reads gzipped tf.Example records and emits one ``(user key per row [N], {column: [N,
    ...]})`` per user bucket, rows grouped by user and time-ordered within each user (the table
    :func:`stack_users` builds from per-user row lists), without a Python object per
    interaction crossing the shuffle (one element per batch and bucket)."""
    return (
        pipeline
        | "Read" >> beam.io.ReadFromTFRecord(pattern, compression_type=beam.io.filesystem.CompressionTypes.AUTO)
        | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=2048)
        | "Parse" >> beam.ParDo(_ParseByBucket(feature_spec, buckets))
        | "GroupByBucket" >> beam.GroupByKey()
        | "ToTable" >> beam.Map(_bucket_table))


def stack_users(users: List[Tuple[str, List[Row]]], columns: Optional[Sequence[str]] = None
                ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Concatenates several users' time-ordered rows into one table, user by user, in time order.

    One ``np.asarray`` per scalar column (``np.stack`` only for vector columns), and only the
    ``columns`` asked for: TaskGen stacks every column, MEG only what its kernel reads.

    Args:
        users: ``[(user_id, rows sorted by time)]``; every row has the same columns.
        columns: columns to stack (default: every column of the first row).

    Returns:
        (user key per row [N] as object array, {column: [N, ...]}).

    Raises:
        KeyError: a requested column is missing from the rows (named, with the columns they have).
    """
    rows = [r for _, rs in users for r in rs]
    keys = np.empty(len(rows), dtype=object)
    pos = 0
    for user, rs in users:
        keys[pos:pos + len(rs)] = user
        pos += len(rs)
    if not rows:
        return keys, {}
    first_row = rows[0]
    missing = [c for c in (columns or ()) if c not in first_row]
    if missing:
        raise KeyError(f"rows lack encoded column(s) {missing}; they have {sorted(first_row)}")
    table: Dict[str, np.ndarray] = {}
    for name in (list(columns) if columns is not None else list(first_row)):
        values = [r[name] for r in rows]
        table[name] = np.stack(values) if np.ndim(first_row[name]) else np.asarray(values)
    return keys, table
