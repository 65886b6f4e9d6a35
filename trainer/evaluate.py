"""Evaluation helpers: AUC / log loss, and post-adaptation query predictions of task batches."""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from trainer.flat_call import FlatCall
from trainer.layout import MASK, QUERY, SUPPORT
from trainer.maml import LABEL, adapt, aggregate, query_embeddings
from trainer.model import LimamlModel, global_forward, meta_forward


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


def _query_genre_embeddings(model: LimamlModel, adapted: Mapping[str, tf.Tensor], s_x: tf.Tensor,
                            batch: Mapping[str, Mapping[str, tf.Tensor]], aggregation: Optional[str],
                            steps: int) -> tf.Tensor:
    """The user × genre block's embeddings of the query rows, ``[T, Q, E]``.

    As :func:`trainer.maml.maml_loss` builds them: the genre block adapts on each query row's
    genre subtask with the adapted user block's support embeddings ``[T, S, E]`` held fixed in
    front. With an ``aggregation`` (serving-time behaviour) that prefix is the user's aggregate
    embedding broadcast over the support rows, as MEG fixes it (``finetune.generate_genre_embeddings``).

    Args:
        model: a model with the user × genre block.
        adapted: the user block's adapted per-task parameters ``{name: [T, ...]}``.
        s_x: dense meta input of the support rows ``[T, S, D]``.
        batch: the task batch (``support`` ``[T, S, ...]``, ``query`` ``[T, Q, ...]``).
        aggregation: None (per-sample user embeddings) or ``latest``/``mean``/``max``.
        steps: adaptation steps of the genre block's inner loop.
    """
    from trainer import genre_block  # noqa: PLC0415  (genre_block imports trainer.maml)

    support_emb = meta_forward(adapted, s_x, model.model_cfg.activation)          # [T, S, E]
    if aggregation is not None:
        agg = aggregate(support_emb, batch[SUPPORT][MASK], aggregation)           # [T, E]
        support_emb = tf.broadcast_to(agg[:, None, :], tf.shape(support_emb))
    return genre_block.query_genre_embeddings(model, batch[SUPPORT], support_emb, batch[QUERY],
                                              steps, first_order=True)


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
        s_x = model.meta_x(batch[SUPPORT], model.history_vector(batch[SUPPORT]))
        adapted = adapt(model, batch[SUPPORT], steps, first_order=True, support_meta_x=s_x)
        emb = query_embeddings(model, adapted, batch, aggregation, support_meta_x=s_x)
        if model.genre_params:
            emb = tf.concat([emb, _query_genre_embeddings(model, adapted, s_x, batch, aggregation,
                                                          steps)], axis=-1)
        return global_forward(model.global_params, emb, batch[QUERY], model.layout, model.model_cfg)

    def call(batch: Mapping[str, Mapping[str, tf.Tensor]]) -> tf.Tensor:
        spec = {part: {k: tf.TensorSpec([None] + list(v.shape[1:]), v.dtype) for k, v in batch[part].items()}
                for part in batch}
        layout = tuple((part, k, tuple(s.shape.as_list()), s.dtype.name)
                       for part in sorted(spec) for k, s in sorted(spec[part].items()))
        key = ("_eval_fn", steps, aggregation, layout)
        if key not in cache:
            cache[key] = FlatCall(tf.function(logits, input_signature=[spec], autograph=False))
        return cache[key](batch)

    return call


def query_predictions(model: LimamlModel, tasks: Mapping[str, Mapping[str, np.ndarray]],
                      aggregation: Optional[str] = None, steps: Optional[int] = None,
                      batch_size: int = 512) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Post-adaptation query probabilities of every valid query position.

    A model with the user × genre block (``ModelConfig.meta_blocks``) scores each query row with
    ``[e_user, e_user×genre]`` (width 2E), the genre part adapted on the row's genre subtask as
    in :func:`trainer.maml.maml_loss`.

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
