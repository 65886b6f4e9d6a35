"""Columnar inputs of MEG: :class:`UserBatch` PCollections from Parquet or tf.Examples.

Two sources, neither of which ever builds a Python object per interaction:

* :func:`ReadUserBatches`: Parquet files written by :func:`write_grouped_parquet`, whose row
  groups are cut at user boundaries; Beam's ``ReadFromParquetBatched`` yields one Arrow table per
  row group, i.e. one batch of whole users (splittable across workers by row group). Refresh and
  the benchmark use it.
* :func:`ReadUserBatchesFromExamples`: Transform's gzipped tf.Examples (any order). Records are
  parsed ~2k at a time into column arrays, split by a stable hash of the user id into
  ``buckets`` groups and regrouped by one shuffle (GroupByKey on the bucket); each bucket becomes
  one :class:`UserBatch`. Memory per element is one bucket (population / buckets).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.meta_embedding_gen import beam_coders
from components.meta_embedding_gen.compact_columns import compact
from components.meta_embedding_gen.user_batch import Columns, UserBatch, user_cuts
from schema import features as F

beam_coders.register()

INPUT_FILE = "users.parquet"


# --------------------------------------------------------------------------------- Arrow <-> numpy
DTYPE_KEY = b"limaml.dtype"
"""Field metadata of a ``[N, W]`` column stored as fixed-size binary: its numpy dtype (``str``)."""
WIDTH_KEY = b"limaml.width"
"""Field metadata of a ``[N, W]`` column stored as fixed-size binary: W."""


def columns_to_arrow(columns: Mapping[str, np.ndarray], narrow: bool = True) -> pa.Table:
    """``{column: [N] or [N, W]}`` -> Arrow table.

    A ``[N, W]`` column (the genre multi-hot) becomes one fixed-size binary value of
    ``W · itemsize`` bytes per row, its dtype and W in the field's metadata: Parquet writes and
    reads those at memory speed, where a list column of W values per row took 6-15x as long
    (2M rows x 64: write 2.2 -> 0.2-0.4 s, read 1.0 -> 0.15-0.6 s). Numbers are stored in the
    narrowest dtype holding them exactly (a 0/1 float matrix as uint8, ids as uint8 / int16 /
    int32: :func:`~components.meta_embedding_gen.compact_columns.compact`); ``narrow=False``
    keeps the given dtypes (parts of one file must share its schema).
    """
    arrays, fields = [], []
    for name, col in columns.items():
        col = np.asarray(col)
        if col.ndim == 1:
            if name != F.USER_ID and narrow:
                col = compact(col)  # ids and counts in the narrowest integer type (same values)
            arr = pa.array(col, type=pa.string() if name == F.USER_ID else None)
            fields.append(pa.field(name, arr.type))
        elif col.ndim == 2:
            if col.dtype == object:
                raise ValueError(f"column {name!r} is [N, W] of Python objects; store numbers")
            col = np.ascontiguousarray(compact(col) if narrow else col)  # a multi-hot as uint8
            width = col.shape[1] * col.dtype.itemsize
            if width == 0:
                raise ValueError(f"column {name!r} has shape {col.shape}: no values per row to store")
            arr = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), col.shape[0], [None, pa.py_buffer(col.tobytes())])
            fields.append(pa.field(name, arr.type, metadata={
                DTYPE_KEY: col.dtype.str.encode(), WIDTH_KEY: str(col.shape[1]).encode()}))
        else:
            raise ValueError(f"column {name!r} has shape {col.shape}; only [N] and [N, W] are stored")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def arrow_to_columns(table: pa.Table) -> Columns:
    """Inverse of :func:`columns_to_arrow` (strings as object arrays of ``str``); ``[N, W]``
    columns stored as fixed-size lists (files of earlier versions) are read too."""
    out: Columns = {}
    for field, col in zip(table.schema, table.columns):
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        meta = field.metadata or {}
        if pa.types.is_fixed_size_binary(arr.type) and DTYPE_KEY in meta:
            dtype, width = np.dtype(meta[DTYPE_KEY].decode()), int(meta[WIDTH_KEY])
            if arr.null_count:
                raise ValueError(f"column {field.name!r} has {arr.null_count} missing rows")
            data = arr.buffers()[1]
            values = np.frombuffer(data, dtype=dtype, count=len(arr) * width,
                                   offset=arr.offset * arr.type.byte_width)
            out[field.name] = values.reshape(len(arr), width)
        elif pa.types.is_fixed_size_list(arr.type):
            width = arr.type.list_size
            out[field.name] = arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        elif pa.types.is_string(arr.type) and not arr.null_count:
            # One Python str per distinct value (a user's id repeats on each of its rows), the
            # rows pointing at it: about half the time of one str per row.
            codes = arr.dictionary_encode()
            out[field.name] = (codes.dictionary.to_numpy(zero_copy_only=False)
                               [codes.indices.to_numpy()])
        else:
            out[field.name] = arr.to_numpy(zero_copy_only=False)
    return out


# --------------------------------------------------------------------------------- Parquet
def write_grouped_parquet(batch: UserBatch, folder: str, rows_per_group: int) -> str:
    """Writes a grouped table to ``folder/users.parquet``, row groups cut at user boundaries.

    Args:
        batch: users grouped and time-ordered (e.g. :meth:`UserBatch.from_grouped`).
        folder: created if missing.
        rows_per_group: about this many rows per row group (= per Beam element); a group ends
            on the first user boundary at or past it, so no user is ever split.

    Returns:
        The file written.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, INPUT_FILE)
    cuts = user_cuts(batch.offsets, rows_per_group)
    # One dtype per column for the whole file, the narrowest holding all of it: narrowed row
    # group by row group, a later group could need a wider type than the file's schema.
    dtypes = {name: compact(np.asarray(col)).dtype for name, col in batch.columns.items()
              if name != F.USER_ID and np.asarray(col).ndim in (1, 2)}
    writer = None
    try:
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            part = batch.take_users(lo, hi).columns
            table = columns_to_arrow({name: (np.asarray(col).astype(dtypes[name], copy=False)
                                             if name in dtypes else col)
                                      for name, col in part.items()}, narrow=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=table.num_rows)
        if writer is None:  # no user: an empty file with no row group
            pq.write_table(columns_to_arrow(batch.columns), path)
    finally:
        if writer is not None:
            writer.close()
    return path


def _to_user_batch(table: pa.Table) -> UserBatch:
    return UserBatch.from_grouped(arrow_to_columns(table))


@beam.ptransform_fn
def ReadUserBatches(pipeline: beam.Pipeline, pattern: str) -> beam.PCollection:  # pylint: disable=invalid-name
    """Files of :func:`write_grouped_parquet` -> PCollection of :class:`UserBatch` (one per row group)."""
    return (pipeline
            | "ReadParquet" >> beam.io.ReadFromParquetBatched(pattern).with_output_types(pa.Table)
            | "ToUserBatch" >> beam.Map(_to_user_batch).with_output_types(UserBatch))


# --------------------------------------------------------------------------------- tf.Examples
def user_buckets(user_ids: np.ndarray, buckets: int) -> np.ndarray:
    """Stable bucket ``[N]`` in ``[0, buckets)`` of each user id (same in every process)."""
    h = pd.util.hash_array(np.asarray(user_ids, dtype=object), categorize=False)
    return (h % np.uint64(buckets)).astype(np.int64)


class _ParseColumns(beam.DoFn):
    """A list of serialized tf.Examples -> ``(bucket, {column: [n, ...]})`` per bucket present."""

    def __init__(self, feature_spec: Mapping[str, Any], buckets: int) -> None:
        self._spec = dict(feature_spec)
        self._buckets = buckets

    def process(self, records: List[bytes]) -> Iterable[Tuple[int, Columns]]:
        import tensorflow as tf

        parsed = tf.io.parse_example(tf.constant(records), self._spec)
        cols = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v).numpy()
                for k, v in parsed.items()}
        n = len(records)
        raw = cols[F.USER_ID].reshape(n, -1)[:, 0]  # bytes; UTF-8 decoded in Arrow
        uid = pa.array(raw, type=pa.binary()).cast(pa.string()).to_numpy(zero_copy_only=False)
        cols[F.USER_ID] = uid
        cols[F.TIMESTAMP] = cols[F.TIMESTAMP].reshape(n, -1)[:, 0].astype(np.int64)
        bucket = user_buckets(uid, self._buckets)
        order = np.argsort(bucket, kind="stable")
        sorted_b = bucket[order]
        starts = np.flatnonzero(np.r_[True, sorted_b[1:] != sorted_b[:-1]]) if n else np.zeros(0, int)
        ends = np.r_[starts[1:], n].astype(int)
        for a, b in zip(starts, ends):
            idx = order[a:b]
            yield int(sorted_b[a]), {k: v[idx] for k, v in cols.items()}


def _group_bucket(item: Tuple[int, Iterable[Columns]]) -> UserBatch:
    _, parts = item
    parts = list(parts)
    cols: Dict[str, np.ndarray] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return UserBatch.group(cols)


@beam.ptransform_fn
def ReadUserBatchesFromExamples(pipeline: beam.Pipeline, pattern: str, feature_spec: Mapping[str, Any],
                                buckets: int) -> beam.PCollection:  # pylint: disable=invalid-name
    """Gzipped tf.Examples (any order) -> PCollection of :class:`UserBatch` (one per bucket)."""
    return (pipeline
            | "Read" >> beam.io.ReadFromTFRecord(pattern, compression_type=beam.io.filesystem.CompressionTypes.AUTO)
            | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=2048)
            | "ParseColumns" >> beam.ParDo(_ParseColumns(feature_spec, buckets))
            | "GroupByBucket" >> beam.GroupByKey()
            | "ToUserBatch" >> beam.Map(_group_bucket).with_output_types(UserBatch))


def buckets_for(pattern: str, bytes_per_bucket: int = 16 << 20, max_buckets: int = 4096) -> int:
    """Shuffle buckets for an input: one per ``bytes_per_bucket`` of (compressed) input files."""
    import tensorflow as tf

    total = sum(tf.io.gfile.stat(p).length for p in tf.io.gfile.glob(pattern))
    return int(min(max_buckets, max(1, -(-total // bytes_per_bucket))))
