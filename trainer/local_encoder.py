"""A small numpy encoder: raw canonical DataFrame -> encoded arrays (the Transform contract).

For tests and benchmarks without TFX. Matches :mod:`trainer.preprocessing`:

* categorical f: vocabulary of the training frame (most frequent first) + 1 OOV id
  (``vocab_size_f = len(vocab) + 1``, unseen values -> ``len(vocab)``),
* genres: ``'|'``-split tokens hashed with ``tf.strings.to_hash_bucket_fast`` (farmhash
  fingerprint64 mod buckets) into a 0/1 multi-hot ``[buckets]``,
* release_year: z-scored with the training mean and (population) standard deviation,
* user_hash: ``to_hash_bucket_fast(user_id, user_id_buckets)``,
* label float32, timestamp int64, user_id passed through.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from schema import features
from trainer.layout import USER_HASH


def hash_strings(values: Iterable[str], buckets: int) -> np.ndarray:
    """``tf.strings.to_hash_bucket_fast`` over an array of strings (one TF call)."""
    arr = np.asarray(list(values), dtype=object).astype(str)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    return tf.strings.to_hash_bucket_fast(tf.constant(arr), buckets).numpy().astype(np.int64)


class LocalEncoder:
    """Fits vocabularies and statistics on a training frame; encodes frames.

    Attributes:
        vocabularies: categorical feature -> array of values (id = index).
        year_mean, year_std: release_year statistics.
        user_id_buckets: hash buckets of the user id.
    """

    def __init__(self, user_id_buckets: int = 2048):
        self.user_id_buckets = user_id_buckets
        self.vocabularies: Dict[str, np.ndarray] = {}
        self._index: Dict[str, Dict[str, int]] = {}
        self.numeric_stats: Dict[str, tuple] = {}

    def fit(self, frame: pd.DataFrame) -> "LocalEncoder":
        """Learns vocabularies (frequency order) and z-score statistics from ``frame``."""
        for enc in features.ENCODINGS:
            col = frame[enc.name]
            if enc.kind == "categorical":
                counts = col.astype(str).value_counts(sort=False)
                order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                vocab = np.array([k for k, _ in order], dtype=object)
                self.vocabularies[enc.name] = vocab
                self._index[enc.name] = {v: i for i, v in enumerate(vocab)}
            elif enc.kind == "numeric":
                x = col.to_numpy(dtype=np.float64)
                self.numeric_stats[enc.name] = (float(x.mean()), float(x.std()))
        return self

    @property
    def vocab_sizes(self) -> Dict[str, int]:
        """Number of ids per categorical feature, including the OOV id."""
        return {k: len(v) + 1 for k, v in self.vocabularies.items()}

    def encode(self, frame: pd.DataFrame, sort: bool = True) -> Dict[str, np.ndarray]:
        """Encodes ``frame``.

        Args:
            frame: canonical interactions.
            sort: sort rows by user_id, then timestamp (the order the task builder needs).

        Returns:
            ``{feature: [N] or [N, buckets], "user_hash", "label", "timestamp", "user_id"}`` and
            ``"oracle_prob"`` when present.
        """
        if not self.vocabularies:
            raise RuntimeError("LocalEncoder.encode called before fit")
        if sort:
            frame = frame.sort_values([features.USER_ID, features.TIMESTAMP], kind="stable")
        out: Dict[str, np.ndarray] = {}
        for enc in features.ENCODINGS:
            col = frame[enc.name]
            if enc.kind == "categorical":
                index = self._index[enc.name]
                oov = len(index)
                out[enc.name] = np.array([index.get(v, oov) for v in col.astype(str)],
                                         dtype=np.int64)
            elif enc.kind == "multi_hot":
                out[enc.name] = self._multi_hot(col.fillna("").astype(str).to_numpy(), enc.buckets)
            else:
                mean, std = self.numeric_stats[enc.name]
                x = col.to_numpy(dtype=np.float64) - mean
                out[enc.name] = (x / std if std > 0 else x).astype(np.float32)
        uid = frame[features.USER_ID].astype(str).to_numpy()
        uniq, inv = np.unique(uid, return_inverse=True)
        out[USER_HASH] = hash_strings(uniq, self.user_id_buckets)[inv]
        out[features.LABEL] = frame[features.LABEL].to_numpy().astype(np.float32)
        out[features.TIMESTAMP] = frame[features.TIMESTAMP].to_numpy().astype(np.int64)
        out[features.USER_ID] = uid.astype(object)
        if features.ORACLE_PROB in frame:
            out[features.ORACLE_PROB] = frame[features.ORACLE_PROB].to_numpy().astype(np.float64)
        return out

    @staticmethod
    def _multi_hot(values: np.ndarray, buckets: int) -> np.ndarray:
        uniq, inv = np.unique(values, return_inverse=True)
        rows = np.zeros((uniq.size, buckets), np.float32)
        toks, owner = [], []
        for i, s in enumerate(uniq):
            for t in s.split(features.GENRE_SEPARATOR):
                if t:
                    toks.append(t)
                    owner.append(i)
        if toks:
            rows[np.asarray(owner), hash_strings(toks, buckets)] = 1.0
        return rows[inv]


def fit_encode(train: pd.DataFrame, others: Optional[Dict[str, pd.DataFrame]] = None,
               user_id_buckets: int = 2048):
    """Fits on ``train`` and encodes it and every frame of ``others``; returns (encoder, dict)."""
    enc = LocalEncoder(user_id_buckets).fit(train)
    out = {"train": enc.encode(train)}
    for k, v in (others or {}).items():
        out[k] = enc.encode(v)
    return enc, out
