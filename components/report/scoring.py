"""Per-row predictions of served models on the evaluation examples (for paired comparisons).

Plain module, no TFX: :func:`score_examples` reads serialized ``tf.Example`` TFRecords once, in
file order, and for every batch (4096 records by default) calls each model's
``serving_default`` signature (serialized examples -> ``{"probabilities": [N]}``, the contract
of ``trainer/export.py``) and parses the user id, label and cohort of the same rows with one
``tf.io.parse_example``. Every model therefore scores exactly the same rows, in the same order,
and no Python runs per example.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from schema import features as F

SERVING_SIGNATURE = "serving_default"
PREDICTION_KEY = "probabilities"
DEFAULT_BATCH_SIZE = 4096
ROW_KEY_FEATURES = (F.ITEM_ID, F.TIMESTAMP)
"""With user, label and cohort: what identifies an evaluation row across two example sets."""


@dataclasses.dataclass(frozen=True)
class ScoredRows:
    """Evaluation rows and every model's prediction for them (all arrays have one entry per row).

    Attributes:
        user_ids: str, the ``user_id`` of each row.
        labels: int64 0/1.
        cohorts: str, the activity cohort of each row.
        scores: model name -> float64 predicted probabilities.
        keys: str row keys (user, label, cohort and the ``key_features`` of
            :func:`score_examples`), None when no key features were asked for.
    """

    user_ids: np.ndarray
    labels: np.ndarray
    cohorts: np.ndarray
    scores: Dict[str, np.ndarray]
    keys: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def users_per_cohort(self, cohorts: Sequence[str]) -> Dict[str, int]:
        """Distinct users overall and per cohort (every name in ``cohorts`` present, 0 if absent)."""
        unknown = sorted(set(self.cohorts.tolist()) - set(cohorts))
        if unknown:
            raise ValueError(f"rows have cohorts {unknown} outside {list(cohorts)}")
        out = {"overall": int(np.unique(self.user_ids).size)}
        for cohort in cohorts:
            out[cohort] = int(np.unique(self.user_ids[self.cohorts == cohort]).size)
        return out

    def to_frame(self):
        """A pandas DataFrame: ``user_id``, ``label``, ``cohort``, then one column per model."""
        import pandas as pd

        frame = pd.DataFrame({F.USER_ID: self.user_ids, F.LABEL: self.labels, F.COHORT: self.cohorts})
        for name, values in self.scores.items():
            frame[name] = values
        return frame


def example_files(pattern: str) -> List[str]:
    """The sorted files matching ``pattern``; FileNotFoundError when none."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no evaluation examples match {pattern!r}")
    return files


def _compression(files: Sequence[str]) -> str:
    kinds = {f.endswith(".gz") for f in files}
    if len(kinds) != 1:
        raise ValueError(f"mixed gzipped and plain TFRecord files: {list(files)}")
    return "GZIP" if kinds.pop() else ""


def _column_spec(first_record: bytes, keys: Iterable[str]) -> Dict[str, object]:
    """``FixedLenFeature([], dtype)`` per key, dtype read from the first example's feature kind."""
    import tensorflow as tf

    feats = tf.train.Example.FromString(first_record).features.feature
    dtypes = {"bytes_list": tf.string, "int64_list": tf.int64, "float_list": tf.float32}
    spec = {}
    for key in keys:
        if key not in feats or feats[key].WhichOneof("kind") is None:
            raise ValueError(f"the evaluation examples have no feature {key!r}")
        spec[key] = tf.io.FixedLenFeature([], dtypes[feats[key].WhichOneof("kind")])
    return spec


def load_serving_fn(model_dir: str, signature: str = SERVING_SIGNATURE):
    """``(loaded SavedModel, its signature function)``; keep the first alive while calling the second."""
    import tensorflow as tf

    if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{model_dir}: no saved_model.pb (expected a served model folder)")
    loaded = tf.saved_model.load(model_dir)
    if signature not in loaded.signatures:
        raise KeyError(f"{model_dir}: no signature {signature!r} (has {sorted(loaded.signatures)})")
    return loaded, loaded.signatures[signature]


def _as_str(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in ("S", "O"):
        return np.asarray([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values],
                          dtype=object)
    return values.astype(str).astype(object)


def score_examples(files: Sequence[str], models: Mapping[str, str], *,
                   batch_size: int = DEFAULT_BATCH_SIZE, signature: str = SERVING_SIGNATURE,
                   prediction_key: str = PREDICTION_KEY, user_key: str = F.USER_ID,
                   label_key: str = F.LABEL, cohort_key: str = F.COHORT,
                   compression: Optional[str] = None, key_features: Sequence[str] = (),
                   stored_predictions: Optional[Mapping[str, str]] = None) -> ScoredRows:
    """Scores every example of ``files`` with every model, batched.

    Args:
        files: TFRecord files of serialized ``tf.Example`` (read in this order; ``.gz`` => GZIP
            unless ``compression`` is given).
        models: model name -> served SavedModel folder (``saved_model.pb`` at its root).
        batch_size: serialized examples per signature call.
        signature: the signature taking ``examples: string[N]``.
        prediction_key: the signature output holding the probabilities (``[N]`` or ``[N, 1]``).
        user_key: the user id feature.
        label_key: the 0/1 label feature.
        cohort_key: the cohort feature.
        compression: ``"GZIP"``, ``""`` or None (from the file names).
        key_features: features that, with user, label and cohort, identify a row
            (:data:`ROW_KEY_FEATURES`); when given, the rows carry ``keys`` for
            :func:`aligned_scores`.
        stored_predictions: ``{name: feature}`` of predictions the examples carry (e.g.
            ``{"oracle": "oracle_prob"}`` on synthetic data), read as that name's scores.

    Returns:
        The rows, with one score array per model (and per stored prediction).

    Raises:
        FileNotFoundError: no file, or a model folder without a SavedModel.
        ValueError: no example, a missing feature, a label outside {0, 1}, or a model output
            that is not one finite probability per example.
    """
    import tensorflow as tf

    files = list(files)
    if not files:
        raise FileNotFoundError("score_examples needs at least one TFRecord file")
    if not models:
        raise ValueError("score_examples needs at least one model")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    compression = _compression(files) if compression is None else compression
    dataset = tf.data.TFRecordDataset(files, compression_type=compression)
    first = next(iter(dataset.take(1)), None)
    if first is None:
        raise ValueError(f"no evaluation example in {files}")
    key_features = tuple(key_features)
    stored = dict(stored_predictions or {})
    clash = sorted(set(stored) & set(models))
    if clash:
        raise ValueError(f"stored_predictions {clash} have the names of served models")
    spec = _column_spec(first.numpy(), (user_key, label_key, cohort_key, *key_features,
                                        *stored.values()))
    loaded = {name: load_serving_fn(path, signature) for name, path in models.items()}
    fns = {name: fn for name, (_, fn) in loaded.items()}

    users: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    cohorts: List[np.ndarray] = []
    extra: Dict[str, List[np.ndarray]] = {k: [] for k in key_features}
    scores: Dict[str, List[np.ndarray]] = {name: [] for name in (*fns, *stored)}
    for batch in dataset.batch(batch_size):
        n = int(batch.shape[0])
        cols = tf.io.parse_example(batch, spec)
        users.append(cols[user_key].numpy())
        labels.append(cols[label_key].numpy())
        cohorts.append(cols[cohort_key].numpy())
        for k in key_features:
            extra[k].append(cols[k].numpy())
        for name, feature in stored.items():
            scores[name].append(cols[feature].numpy().astype(np.float64).reshape(n))
        for name, fn in fns.items():
            out = fn(examples=batch)
            if prediction_key not in out:
                raise ValueError(f"model {name!r}: {signature} has no output {prediction_key!r} "
                                 f"(has {sorted(out)})")
            values = out[prediction_key].numpy().astype(np.float64)
            if values.size != n:
                raise ValueError(f"model {name!r}: {values.shape} predictions for {n} examples")
            scores[name].append(values.reshape(n))

    label_array = np.concatenate(labels)
    if label_array.dtype.kind == "f":
        if not np.all(np.isin(label_array, (0.0, 1.0))):
            raise ValueError(f"{label_key!r} holds values outside {{0, 1}}")
        label_array = label_array.astype(np.int64)
    elif label_array.dtype.kind != "i" or not np.all(np.isin(label_array, (0, 1))):
        raise ValueError(f"{label_key!r} must be a 0/1 int label, got {label_array.dtype} values "
                         f"{np.unique(label_array)[:5].tolist()}")
    out_scores = {name: np.concatenate(parts) for name, parts in scores.items()}
    for name, values in out_scores.items():
        if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
            raise ValueError(f"model {name!r} returned predictions outside [0, 1]")
    user_ids, cohort_array = _as_str(np.concatenate(users)), _as_str(np.concatenate(cohorts))
    keys = None
    if key_features:
        columns = [user_ids, label_array.astype(str).astype(object), cohort_array,
                   *(_as_str(np.concatenate(extra[k])) for k in key_features)]
        keys = np.array(["\x1f".join(parts) for parts in zip(*columns)], dtype=object)
    return ScoredRows(user_ids=user_ids, labels=label_array, cohorts=cohort_array, scores=out_scores,
                      keys=keys)


def aligned_scores(rows: ScoredRows, other: ScoredRows, name: str) -> np.ndarray:
    """``other.scores[name]`` in the order of ``rows``: the same evaluation rows read from another
    example set (e.g. the multi-block join's), matched by their ``keys``.

    Raises:
        ValueError: a side without keys, or the two sets do not hold the same rows.
    """
    if rows.keys is None or other.keys is None:
        raise ValueError("aligned_scores needs rows scored with key_features")
    if len(rows) != len(other):
        raise ValueError(f"{name}: {len(other)} rows in its example set, {len(rows)} in the report's")
    mine, theirs = np.argsort(rows.keys, kind="stable"), np.argsort(other.keys, kind="stable")
    if not np.array_equal(rows.keys[mine], other.keys[theirs]):
        raise ValueError(f"{name}: its example set does not hold the report's evaluation rows")
    out = np.empty(len(rows), np.float64)
    out[mine] = other.scores[name][theirs]
    return out
