"""LiMAML vs baselines on one canonical frame (synthetic or real), without TFX.

Protocol: a random ``eval_fraction`` of users are evaluation users. Each evaluation user's
history is its interactions before its last task split (``build_tasks`` with one task per
user); the query is the next ``query_size`` interactions. Training data for every model:
training users' full histories plus evaluation users' histories (never a query interaction).
LiMAML adapts on the last ``support_size`` history interactions; the baselines train on all
history rows (wide&deep learns the evaluation users' id embeddings from them).
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from limaml.config import LimamlConfig, TaskConfig
from schema import features
from trainer import baselines, evaluate
from trainer.layout import MASK, QUERY, SUPPORT, build_layout
from trainer.local_encoder import LocalEncoder
from trainer.maml import MamlTrainer
from trainer.model import LimamlModel
from trainer.tasks import _groups, build_tasks


def _take(table, rows):
    return {k: v[rows] for k, v in table.items()}


def compare(frame: pd.DataFrame, cfg: LimamlConfig, steps: int, eval_fraction: float = 0.3,
            seed: int = 0, baseline_kinds=("global_dnn", "wide_deep"),
            aggregation: Optional[str] = None, eval_every: int = 100, patience: int = 3,
            val_fraction: float = 0.1) -> Dict[str, object]:
    """Trains LiMAML and the baselines on ``frame``; returns query AUCs (+ oracle when known).

    Args:
        frame: canonical interactions (``oracle_prob`` optional).
        cfg: model / MAML / task / train settings.
        steps: maximum LiMAML outer steps.
        eval_fraction: fraction of evaluation users.
        seed: user split and batch sampling seed.
        baseline_kinds: baselines to train.
        aggregation: LiMAML query embeddings: None (per sample) or the serving aggregate.
        eval_every, patience, val_fraction: LiMAML early stopping: every ``eval_every`` steps
            the query log loss of held-out training users' tasks is measured; training stops
            after ``patience`` evaluations without improvement and the best weights are kept.
        
    Returns:
        ``{"auc": {model: auc}, "n_query": int, "seconds": {...}}``.
    """
    rng = np.random.RandomState(seed)
    enc = LocalEncoder(cfg.model.user_id_buckets).fit(frame)
    table = enc.encode(frame)
    users = np.unique(table[features.USER_ID])
    is_eval_user = np.isin(table[features.USER_ID],
                           rng.choice(users, int(len(users) * eval_fraction), replace=False))
    keys = [k for k in table if k != features.USER_ID]
    ev = _take(table, np.flatnonzero(is_eval_user))
    one = TaskConfig(cfg.tasks.support_size, cfg.tasks.query_size, cfg.tasks.min_support,
                     cfg.tasks.min_query, 1)
    ev_tasks = build_tasks(ev, features.USER_ID, one, keys)
    # history rows of evaluation users: positions before their split
    starts, counts = _groups(ev[features.USER_ID])
    pos = np.arange(len(ev[features.USER_ID])) - np.repeat(starts, counts)
    split_of_user = dict(zip(ev_tasks["user"], ev_tasks["split"]))
    split = np.array([split_of_user.get(u, -1) for u in ev[features.USER_ID][starts]])
    hist = _take(ev, np.flatnonzero(pos < np.repeat(split, counts)))
    train = _take(table, np.flatnonzero(~is_eval_user))
    train = {k: np.concatenate([train[k], hist[k]]) for k in train}
    order = np.lexsort((train[features.TIMESTAMP], train[features.USER_ID]))
    train = _take(train, order)
    tasks = build_tasks(train, features.USER_ID, cfg.tasks, keys)

    layout = build_layout(cfg.model, enc.vocab_sizes)
    out: Dict[str, object] = {"auc": {}, "seconds": {}, "train_tasks": len(tasks["user"]),
                              "eval_users": len(ev_tasks["user"])}
    qmask = ev_tasks[QUERY][MASK] > 0
    labels = ev_tasks[QUERY][features.LABEL][qmask]
    out["n_query"] = int(qmask.sum())
    if features.ORACLE_PROB in ev_tasks[QUERY]:
        out["auc"]["oracle"] = evaluate.auc(labels, ev_tasks[QUERY][features.ORACLE_PROB][qmask])

    t0 = time.time()
    tf.random.set_seed(seed)
    model = LimamlModel(layout, cfg.model, cfg.maml, seed=cfg.train.seed)
    trainer = MamlTrainer(model)
    # early stopping on the query log loss of held-out training users' tasks (like the baselines)
    task_users = np.unique(tasks["user"])
    val_users = rng.choice(task_users, max(1, int(len(task_users) * val_fraction)), replace=False)
    is_val = np.isin(tasks["user"], val_users)
    val_tasks = {p: {k: v[is_val] for k, v in tasks[p].items()} for p in (SUPPORT, QUERY)}
    numeric = {p: {k: v[~is_val] for k, v in tasks[p].items() if v.dtype != object}
               for p in (SUPPORT, QUERY)}
    T = int((~is_val).sum())
    B = min(cfg.train.tasks_per_batch, T)
    variables = model.outer_variables()
    best, best_step, best_vals, waited = np.inf, 0, [v.numpy() for v in variables], 0
    for step in range(1, steps + 1):
        idx = rng.randint(0, T, B)
        trainer.train_step({p: {k: tf.constant(v[idx]) for k, v in d.items()}
                            for p, d in numeric.items()})
        if step % eval_every == 0 or step == steps:
            probs, y, _ = evaluate.query_predictions(model, val_tasks, aggregation)
            loss = evaluate.log_loss(y, probs)
            out.setdefault("limaml_val_logloss", []).append((step, round(loss, 5)))
            if loss < best - 1e-5:
                best, best_step, best_vals, waited = loss, step, [v.numpy() for v in variables], 0
            else:
                waited += 1
                if waited >= patience:
                    break
    for v, val in zip(variables, best_vals):
        v.assign(val)
    out["limaml_best_step"] = best_step
    out["seconds"]["limaml"] = time.time() - t0
    probs, y, _ = evaluate.query_predictions(model, ev_tasks, aggregation)
    out["auc"]["limaml"] = evaluate.auc(y, probs)
    probs, y, _ = evaluate.query_predictions(model, ev_tasks, aggregation, steps=0)
    out["auc"]["limaml_unadapted"] = evaluate.auc(y, probs)
    query_rows = {k: ev_tasks[QUERY][k][qmask] for k in keys}
    for kind in baseline_kinds:
        t0 = time.time()
        b = baselines.make_baseline(kind, layout, cfg.model, seed=cfg.train.seed)
        hist_info = baselines.fit_baseline(b, train, cfg.train)
        out["seconds"][kind] = time.time() - t0
        out["auc"][kind] = evaluate.auc(labels, baselines.predict_logits(b, query_rows))
        out.setdefault("baseline_epochs", {})[kind] = hist_info["best_epoch"] + 1
    return out
