"""Task record format: one ``tf.train.Example`` per task, padded to fixed sizes.

Feature keys (``S`` = support_size, ``Q`` = query_size, ``B`` = buckets of a multi-hot feature)::

    support/<f>      categorical f: int64[S]; multi-hot f: float[S*B] (row-major [S, B]);
                     numeric f: float[S]
    support/label    float[S]
    support/timestamp int64[S]
    support/mask     float[S]   1 = valid position (valid positions first, in time order)
    query/...        the same with Q
    user_id          bytes[1]
    user_hash        int64[1]   hashed user id (broadcast to every position when parsed)

``<f>`` ranges over :data:`schema.features.MODEL_FEATURES`.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from limaml.config import TaskConfig
from schema import features
from trainer import example_wire
from trainer.layout import MASK, QUERY, SUPPORT, USER_HASH

LABEL = features.LABEL
TIMESTAMP = features.TIMESTAMP
USER_ID = features.USER_ID


def _columns() -> List[tuple]:
    """(name, dtype, width) of every per-position column of a task."""
    cols = []
    for enc in features.ENCODINGS:
        if enc.kind == "categorical":
            cols.append((enc.name, tf.int64, 1))
        elif enc.kind == "multi_hot":
            cols.append((enc.name, tf.float32, enc.buckets))
        else:
            cols.append((enc.name, tf.float32, 1))
    cols.append((LABEL, tf.float32, 1))
    cols.append((TIMESTAMP, tf.int64, 1))
    return cols


def feature_spec(task_cfg: TaskConfig) -> Dict[str, tf.io.FixedLenFeature]:
    """tf.io parsing spec of a task record."""
    spec: Dict[str, tf.io.FixedLenFeature] = {}
    for part, n in ((SUPPORT, task_cfg.support_size), (QUERY, task_cfg.query_size)):
        for name, dtype, width in _columns():
            spec[f"{part}/{name}"] = tf.io.FixedLenFeature([n * width], dtype)
        spec[f"{part}/{MASK}"] = tf.io.FixedLenFeature([n], tf.float32)
    spec[USER_ID] = tf.io.FixedLenFeature([], tf.string, default_value="")
    spec[USER_HASH] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    return spec


def encode_task(user_id, user_hash: int, support: Mapping[str, np.ndarray],
                query: Mapping[str, np.ndarray]) -> bytes:
    """Serialises one task.

    Args:
        user_id: the task key (str or bytes).
        user_hash: hashed user id.
        support: ``{column: [S, ...], "mask": [S]}`` (padded, columns of :func:`feature_spec`).
        query: ``{column: [Q, ...], "mask": [Q]}``.

    Returns:
        The serialized ``tf.train.Example``.
    """
    one = {part: {k: np.asarray(v)[None] for k, v in data.items()}
           for part, data in ((SUPPORT, support), (QUERY, query))}
    return encode_tasks(one, [user_id], [user_hash])[0]


def encode_tasks(tasks: Mapping[str, object], user_ids: Sequence, user_hashes: Sequence[int]
                 ) -> List[bytes]:
    """Serialises every task of a :func:`trainer.tasks.build_tasks` result, all at once
    (:func:`trainer.example_wire.serialize_examples`; the same records as building each
    ``tf.train.Example`` message, ~12x faster).

    Args:
        tasks: ``{"support": {col: [T, S, ...]}, "query": {col: [T, Q, ...]}}``.
        user_ids: ``[T]`` user ids.
        user_hashes: ``[T]`` user hashes.

    Raises:
        KeyError: a set lacks a column of :func:`feature_spec` (named).
    """
    n = len(user_ids)
    columns = []
    for part in (SUPPORT, QUERY):
        data = tasks[part]
        for name, dtype, _ in _columns() + [(MASK, tf.float32, 1)]:
            if name not in data:
                raise KeyError(f"task {part} set lacks column {name!r}; has {sorted(data)}")
            kind = example_wire.INT64 if dtype == tf.int64 else example_wire.FLOAT
            columns.append((f"{part}/{name}", kind, np.asarray(data[name]).reshape(n, -1)))
    columns.append((USER_ID, example_wire.BYTES, np.asarray(list(user_ids), dtype=object)[:, None]))
    columns.append((USER_HASH, example_wire.INT64,
                    np.asarray(list(user_hashes), dtype=np.int64)[:, None]))
    return example_wire.serialize_examples(columns)


def parse_tasks(serialized: tf.Tensor, task_cfg: TaskConfig) -> Dict[str, object]:
    """Parses a batch of serialized task records into the task batch dict.

    Args:
        serialized: ``[T]`` strings.
        task_cfg: support/query sizes.

    Returns:
        ``{"support": {f: [T, S, ...], "label": [T, S], "timestamp": [T, S], "user_hash": [T, S],
        "mask": [T, S]}, "query": {... [T, Q, ...]}, "user_id": [T], "user_hash": [T]}``.
    """
    parsed = tf.io.parse_example(serialized, feature_spec(task_cfg))
    out: Dict[str, object] = {USER_ID: parsed[USER_ID], USER_HASH: parsed[USER_HASH]}
    for part, n in ((SUPPORT, task_cfg.support_size), (QUERY, task_cfg.query_size)):
        d: Dict[str, tf.Tensor] = {}
        for name, _, width in _columns():
            v = parsed[f"{part}/{name}"]
            d[name] = tf.reshape(v, [-1, n, width]) if width > 1 else v
        d[MASK] = parsed[f"{part}/{MASK}"]
        d[USER_HASH] = tf.broadcast_to(parsed[USER_HASH][:, None], tf.shape(d[MASK]))
        out[part] = d
    return out


def task_dataset(file_patterns, task_cfg: TaskConfig, batch_size: int, shuffle: bool = True,
                 repeat: bool = False, seed: Optional[int] = None, compression: str = "GZIP",
                 drop_remainder: bool = True) -> tf.data.Dataset:
    """tf.data pipeline over (gzipped) TFRecord files of task records -> task batch dicts."""
    if isinstance(file_patterns, (str, bytes)):
        file_patterns = [file_patterns]
    expanded = []
    for pat in file_patterns:
        expanded.extend(tf.io.gfile.glob(pat if not tf.io.gfile.isdir(pat) else pat + "/*"))
    files = sorted(set(expanded))
    if not files:
        raise FileNotFoundError(f"no task record files match {list(file_patterns)}")
    ds = tf.data.TFRecordDataset(files, compression_type=compression)
    if shuffle:
        ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda s: parse_tasks(s, task_cfg), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def write_tasks(path: str, records: Sequence[bytes], compression: str = "GZIP") -> None:
    """Writes serialized task records to one TFRecord file."""
    with tf.io.TFRecordWriter(path, options=compression) as w:
        for r in records:
            w.write(r)
