"""TF Serving warm-up records for the exported global block.

TF Serving replays ``<version>/assets.extra/tf_serving_warmup_requests`` (a TFRecord file of
``PredictionLog``s) when it loads a version, before the version serves, on every replica: the
first client requests then do not pay the model's first calls (function instantiation, table
initialisation, TensorFlow's first multi-row kernels: ~0.3 s and ~20 ms on the stand-in). A
ranker's own warm-up reaches one replica only. The stand-in replays the same file
(:mod:`serving.model_server.warmup`).

The requests call ``predict_raw`` with blank rows (``""`` strings, zero numbers, a zero
embedding), which the Transform maps to its out-of-vocabulary and default encodings.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from components.common.model_layout import WARMUP_REQUESTS_FILE

WARMUP_ROWS = (1, 16)  # one request per row count: the single-row and the multi-row kernels


def warmup_requests(signature: str, inputs: Mapping[str, tf.TensorSpec],
                    rows: Sequence[int] = WARMUP_ROWS) -> list:
    """``PredictRequest``s of blank rows for ``signature``, one per row count.

    Args:
        signature: the signature key.
        inputs: input name -> spec (``[None]`` or ``[None, W]``; strings and numbers).
        rows: the row counts.

    Raises:
        ValueError: an input whose shape is not ``[None]`` or ``[None, W]``.
    """
    out = []
    for n in rows:
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = signature
        for name, spec in inputs.items():
            dims = spec.shape.as_list()
            if not dims or dims[0] is not None or len(dims) > 2 or None in dims[1:]:
                raise ValueError(f"input {name!r} has shape {dims}; warm-up rows need [None] or "
                                 "[None, W]")
            shape = [n] + dims[1:]
            if spec.dtype == tf.string:
                value = np.full(shape, b"", dtype=object)
            else:
                value = np.zeros(shape, dtype=spec.dtype.as_numpy_dtype)
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=spec.dtype))
        out.append(request)
    return out


def write_warmup(saved_model_dir: str, signature: str, inputs: Mapping[str, tf.TensorSpec],
                 rows: Sequence[int] = WARMUP_ROWS) -> str:
    """Writes the warm-up file (``WARMUP_REQUESTS_FILE``) under ``saved_model_dir``; returns
    its path."""
    path = os.path.join(saved_model_dir, WARMUP_REQUESTS_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for request in warmup_requests(signature, inputs, rows):
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


__all__ = ["WARMUP_ROWS", "warmup_requests", "write_warmup"]
