"""Refresh: raw canonical rows -> the model's encoded features, with the pushed Transform graph.

The pushed version folder carries a copy of the Transform output
(``assets.extra/meta_block/transform_graph/``); :func:`encode_with_transform` feeds it the raw
columns the meta block needs (:data:`NEEDED_RAW_COLUMNS`) in chunks and returns numpy columns in
the frame's row order. :func:`check_columns` names missing raw columns before any work.

Used by :mod:`components.meta_embedding_gen.refresh` and ``benchmarks/serve_blocks.py``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
import pandas as pd

from schema import features as F

ENCODE_CHUNK_ROWS = 65_536


# Raw columns meta-embedding generation reads: the model's features, the user id (task key and
# hashed user-id input), the label (fine-tuning loss) and the timestamp (order, recency). Other
# raw features of the transform's input (rating, oracle_prob, the protocol's cohort and
# history_size) feed nothing the meta block uses; TFT fills them with defaults.
NEEDED_RAW_COLUMNS: Tuple[str, ...] = (F.USER_ID, F.TIMESTAMP, F.LABEL) + F.MODEL_FEATURES


def needed_raw_features(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The entries of a transform's raw feature ``spec`` that refresh feeds (:data:`NEEDED_RAW_COLUMNS`)."""
    return {name: feat for name, feat in spec.items() if name in NEEDED_RAW_COLUMNS}


def check_columns(frame: pd.DataFrame, spec: Dict[str, Any], data_dir: str) -> None:
    """Raises ValueError naming the needed raw columns the prepared data lacks (before any work)."""
    missing = [name for name in needed_raw_features(spec) if name not in frame.columns]
    if missing:
        raise ValueError(f"{data_dir}: the prepared data lacks column(s) {missing} that the model reads "
                         f"(has {list(frame.columns)}); prepare it with limaml data prepare")


def _raw_tensors(frame: pd.DataFrame, spec: Dict[str, Any]) -> Dict[str, Any]:
    import tensorflow as tf

    out: Dict[str, Any] = {}
    n = len(frame)
    for name, feat in needed_raw_features(spec).items():
        if name not in frame.columns:
            raise ValueError(f"the model reads raw column {name!r}, which the prepared "
                             f"data lacks (columns: {list(frame.columns)})")
        col = frame[name].to_numpy()
        if feat.dtype == tf.string:
            values = tf.constant(col.astype(str))  # UTF-8 (numpy's bytes cast is ASCII only)
        else:
            values = tf.constant(col.astype(feat.dtype.as_numpy_dtype))
        if isinstance(feat, tf.io.FixedLenFeature):
            shape = list(feat.shape)
            if shape not in ([], [1]):
                raise ValueError(f"raw feature {name!r} has shape {shape}; refresh expects scalars")
            out[name] = values if not shape else tf.reshape(values, [n, 1])
        elif isinstance(feat, tf.io.VarLenFeature):
            out[name] = tf.SparseTensor(
                indices=tf.stack([tf.range(n, dtype=tf.int64), tf.zeros([n], tf.int64)], axis=1),
                values=values, dense_shape=[n, 1])
        else:
            raise ValueError(f"raw feature {name!r} has an unsupported spec {type(feat).__name__}")
    return out


def raw_spec_of(output: Any) -> Dict[str, Any]:
    """The raw feature spec of a ``TFTransformOutput`` (the canonical contract when not copied)."""
    from trainer import preprocessing

    try:
        return output.raw_feature_spec()
    except Exception:  # noqa: BLE001 - raw metadata not copied: the canonical contract
        return preprocessing.raw_feature_spec()


def encode_with_transform(frame: pd.DataFrame, transform_dir: str,
                          chunk_rows: int = ENCODE_CHUNK_ROWS) -> Dict[str, np.ndarray]:
    """Raw canonical rows -> encoded model features with the pushed Transform graph.

    Args:
        frame: canonical interactions ``[N]``.
        transform_dir: a TFT output folder (``TFTransformOutput``).
        chunk_rows: rows transformed per call.

    Returns:
        ``{feature: [N, ...]}`` in the frame's row order; ``user_id`` (object str) and
        ``timestamp`` (int64) are taken from ``frame``.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(transform_dir)
    spec = raw_spec_of(output)
    parts: Dict[str, List[np.ndarray]] = {}
    for lo in range(0, len(frame), chunk_rows):
        chunk = frame.iloc[lo:lo + chunk_rows]
        got = output.transform_raw_features(_raw_tensors(chunk, spec), drop_unused_features=True)
        for name, value in got.items():
            if isinstance(value, tf.SparseTensor):
                value = tf.sparse.to_dense(value)
            elif isinstance(value, tf.RaggedTensor):
                value = value.to_tensor()
            parts.setdefault(name, []).append(value.numpy())
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out[F.USER_ID] = frame[F.USER_ID].astype(str).to_numpy().astype(object)
    out[F.TIMESTAMP] = frame[F.TIMESTAMP].to_numpy().astype(np.int64)
    return out
