"""Reading Transform outputs in Beam and regrouping them per user.

Transformed examples are parsed in batches (``tf.io.parse_example`` on ~1k records) and turned
into per-interaction rows of numpy values; per-user work happens after a GroupByKey and users are
then packed into batches so the numpy/TF kernels run over many users at once.
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


class _ParseBatch(beam.DoFn):
    """Parses a batch of serialized tf.Examples with a feature spec into per-row dicts."""

    def __init__(self, feature_spec: Mapping[str, Any]) -> None:
        self._spec = dict(feature_spec)

    def process(self, batch: List[bytes]) -> Iterable[Tuple[str, Row]]:
        parsed = tf.io.parse_example(tf.constant(batch), self._spec)
        arrays = {k: (v.numpy() if not isinstance(v, tf.SparseTensor) else tf.sparse.to_dense(v).numpy())
                  for k, v in parsed.items()}
        users = arrays[F.USER_ID].reshape(len(batch), -1)[:, 0]
        for i in range(len(batch)):
            yield users[i].decode(), {k: v[i] for k, v in arrays.items()}


@beam.ptransform_fn
def ReadRowsByUser(pipeline: beam.Pipeline, pattern: str, feature_spec: Mapping[str, Any]
                   ) -> beam.PCollection:  # pylint: disable=invalid-name
    """Reads gzipped tf.Example records and emits ``(user_id, [rows sorted by time])``."""
    return (
        pipeline
        | "Read" >> beam.io.ReadFromTFRecord(pattern, compression_type=beam.io.filesystem.CompressionTypes.AUTO)
        | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=2048)
        | "Parse" >> beam.ParDo(_ParseBatch(feature_spec))
        | "GroupByUser" >> beam.GroupByKey()
        | "SortByTime" >> beam.MapTuple(lambda u, rows: (u, sorted(rows, key=lambda r: int(r[F.TIMESTAMP])))))


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
