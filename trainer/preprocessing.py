"""Transform ``preprocessing_fn``: raw canonical features -> the encoded model contract.

Outputs (same names as :mod:`schema.features`; see :mod:`trainer.layout`):

* categorical f: ``tft.compute_and_apply_vocabulary(num_oov_buckets=1, vocab_filename=f)`` int64,
* genres: ``'|'``-split tokens hashed by ``tf.strings.to_hash_bucket_fast`` into a 0/1 float32
  multi-hot ``[buckets]``,
* release_year: ``tft.scale_to_z_score`` float32,
* ``user_hash``: ``to_hash_bucket_fast(user_id, ModelConfig.user_id_buckets)`` int64,
* ``label`` float32, ``timestamp`` int64, ``user_id`` string (passed through).

The trainer reads vocabulary sizes with ``TFTransformOutput.vocabulary_size_by_name(f)`` (+1 OOV).
"""
from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional

import tensorflow as tf

from schema import features
from trainer.layout import USER_HASH

_DTYPES = {"str": tf.string, "int64": tf.int64, "float64": tf.float32}


def raw_feature_spec(include_label: bool = True) -> Dict[str, tf.io.FixedLenFeature]:
    """Parsing spec of the canonical raw record (for tests and standalone use)."""
    spec = {name: tf.io.FixedLenFeature([], _DTYPES[kind])
            for name, kind in features.CANONICAL_COLUMNS.items()}
    if not include_label:
        spec.pop(features.LABEL)
    return spec


def _dense(x, default) -> tf.Tensor:
    """A raw input as a dense ``[N]`` tensor (sparse/varlen inputs take their first value)."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x, default_value=default)
    if isinstance(x, tf.RaggedTensor):
        x = x.to_tensor(default_value=default)
    if x.shape.rank == 2:
        pad = tf.fill([tf.shape(x)[0], 1], tf.constant(default, x.dtype))
        x = tf.concat([x, pad], axis=1)[:, 0]
    return x


def _user_id_buckets(custom_config: Optional[Mapping[str, Any]]) -> int:
    from limaml.config import ModelConfig

    if custom_config and "limaml_config" in custom_config:
        raw = custom_config["limaml_config"]
        raw = json.loads(raw) if isinstance(raw, str) else raw
        return int(raw.get("model", {}).get("user_id_buckets", ModelConfig().user_id_buckets))
    if custom_config and "user_id_buckets" in custom_config:
        return int(custom_config["user_id_buckets"])
    return ModelConfig().user_id_buckets


def multi_hot(strings: tf.Tensor, buckets: int) -> tf.Tensor:
    """``'|'``-joined strings ``[N]`` -> 0/1 multi-hot ``[N, buckets]`` (empty tokens ignored)."""
    tokens = tf.strings.split(strings, sep=features.GENRE_SEPARATOR)
    tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
    ids = tf.strings.to_hash_bucket_fast(tokens.flat_values, buckets)
    rows = tokens.value_rowids()
    hot = tf.math.unsorted_segment_sum(tf.one_hot(ids, buckets, dtype=tf.float32), rows,
                                       tf.shape(strings, out_type=rows.dtype)[0])
    return tf.minimum(hot, 1.0)


def preprocessing_fn(inputs: Mapping[str, Any], custom_config: Optional[Mapping[str, Any]] = None
                     ) -> Dict[str, tf.Tensor]:
    """TFX Transform entry point (``trainer.preprocessing.preprocessing_fn``).

    Args:
        inputs: raw features (dense ``[N]``/``[N, 1]`` or sparse).
        custom_config: optional; ``{"limaml_config": LimamlConfig JSON}`` sets user_id_buckets.

    Returns:
        Encoded features (the model contract).
    """
    import tensorflow_transform as tft

    out: Dict[str, tf.Tensor] = {}
    for enc in features.ENCODINGS:
        raw = inputs[enc.name]
        if enc.kind == "categorical":
            x = _dense(raw, "" if raw.dtype == tf.string else 0)
            if x.dtype != tf.string:
                x = tf.strings.as_string(x)
            out[enc.name] = tft.compute_and_apply_vocabulary(
                x, num_oov_buckets=1, vocab_filename=enc.name)
        elif enc.kind == "multi_hot":
            out[enc.name] = multi_hot(_dense(raw, ""), enc.buckets)
        else:
            x = tf.cast(_dense(raw, 0 if raw.dtype != tf.string else ""), tf.float32)
            out[enc.name] = tft.scale_to_z_score(x)
    user_id = _dense(inputs[features.USER_ID], "")
    out[features.USER_ID] = user_id
    out[USER_HASH] = tf.strings.to_hash_bucket_fast(user_id, _user_id_buckets(custom_config))
    if features.LABEL in inputs:
        out[features.LABEL] = tf.cast(_dense(inputs[features.LABEL], 0), tf.float32)
    if features.TIMESTAMP in inputs:
        out[features.TIMESTAMP] = tf.cast(_dense(inputs[features.TIMESTAMP], 0), tf.int64)
    return out
