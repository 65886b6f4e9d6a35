"""Small numeric helpers shared by the meta block, the global block and the baselines."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def _act(name: str):
    return {"relu": tf.nn.relu, "tanh": tf.math.tanh}[name]


def _dot(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """``x [..., f] @ w [f, ...]`` by tensordot.

    Note: ``tf.einsum("...f,fh->...h")`` with a rank-2 ``x`` returns wrong values on CPU with
    oneDNN enabled in TF 2.16 (checked here: errors of order 50 for a [50, 105] x [105, 64]
    product), so contractions with shared weights use tensordot.
    """
    return tf.tensordot(x, w, axes=1)


def _glorot(rng: np.random.RandomState, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))
