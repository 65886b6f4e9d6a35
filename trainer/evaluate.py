"""Evaluation helpers: AUC / log loss, and post-adaptation query predictions of task batches."""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from trainer.layout import MASK, QUERY, SUPPORT
from trainer.maml import LABEL, adapt, query_embeddings
from trainer.model import LimamlModel, global_forward


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get average ranks); NaN if one class is absent."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, np.float64)
    sorted_s = s[order]
    # average ranks of ties
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.size]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities."""
    p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _query_logits_fn(model: LimamlModel, steps: int, aggregation: Optional[str]
                     ) -> Callable[[Mapping[str, Mapping[str, tf.Tensor]]], tf.Tensor]:
    """Post-adaptation query logits of a batch of tasks, compiled once per batch layout.

    The ``tf.function`` has an input signature with the task dimension unknown, so every batch
    of a call (the last, smaller one included) and every later call with the same support and
    query sizes reuse one trace per ``(steps, aggregation)``. Without it, each of the trainer's
    evaluations traced again for its last batch, and TF warned about frequent retracing.
    """
    cache = model.__dict__.setdefault("_eval_cache", {})

    def logits(batch):
        adapted = adapt(model, batch[SUPPORT], steps, first_order=True)
        emb = query_embeddings(model, adapted, batch, aggregation)
        return global_forward(model.global_params, emb, batch[QUERY], model.layout, model.model_cfg)

    def call(batch: Mapping[str, Mapping[str, tf.Tensor]]) -> tf.Tensor:
        spec = {part: {k: tf.TensorSpec([None] + list(v.shape[1:]), v.dtype) for k, v in batch[part].items()}
                for part in batch}
        layout = tuple((part, k, tuple(s.shape.as_list()), s.dtype.name)
                       for part in sorted(spec) for k, s in sorted(spec[part].items()))
        key = ("_eval_fn", steps, aggregation, layout)
        if key not in cache:
            cache[key] = tf.function(logits, input_signature=[spec])
        return cache[key](batch)

    return call


def query_predictions(model: LimamlModel, tasks: Mapping[str, Mapping[str, np.ndarray]],
                      aggregation: Optional[str] = None, steps: Optional[int] = None,
                      batch_size: int = 512) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Post-adaptation query probabilities of every valid query position.

    Args:
        model: the model.
        tasks: task arrays ``{"support": {...[T, S, ...]}, "query": {...[T, Q, ...]}}``.
        aggregation: None (per-sample meta embeddings) or ``latest``/``mean``/``max``
            (serving-time behaviour: the support aggregate for every query sample).
        steps: adaptation steps (default ``model.maml_cfg.adaptation_steps``).
        batch_size: tasks per call.

    Returns:
        ``(probs [M], labels [M], index [M, 2])`` over valid query positions (task, position).
    """
    steps = model.maml_cfg.adaptation_steps if steps is None else steps
    fn = _query_logits_fn(model, steps, aggregation)
    T = len(np.asarray(tasks[QUERY][MASK]))
    outs = []
    for i in range(0, T, batch_size):
        b = {p: {k: tf.constant(np.asarray(v)[i:i + batch_size]) for k, v in tasks[p].items()
                 if np.asarray(v).dtype != object} for p in (SUPPORT, QUERY)}
        outs.append(fn(b).numpy())
    logits = np.concatenate(outs) if outs else np.zeros((0, 0))
    mask = np.asarray(tasks[QUERY][MASK]) > 0
    probs = 1.0 / (1.0 + np.exp(-logits[mask]))
    return probs, np.asarray(tasks[QUERY][LABEL])[mask], np.argwhere(mask)


def summary(labels: np.ndarray, probs: np.ndarray) -> Dict[str, float]:
    """AUC and log loss."""
    return {"auc": auc(labels, probs), "logloss": log_loss(labels, probs), "n": int(len(labels))}
