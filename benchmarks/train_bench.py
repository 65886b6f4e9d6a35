"""Meta-training throughput: the batched trainer vs a vectorized-map and a per-task-loop step.

Every implementation runs the same model, data and MAML step (inner loop + second- or
first-order outer gradient + Adam) inside one ``tf.function``:

* ``batched`` / ``batched_xla``: :class:`trainer.maml.MamlTrainer`'s step (all tasks at once,
  per-task parameter copies ``[tasks, ...]``, batched matmuls; the second with XLA);
* ``vmap``: an independent functional implementation, a per-task loss with explicit parameters
  vectorized over tasks by ``tf.vectorized_map`` (what JAX's ``vmap`` + ``grad`` does);
* ``per_task_loop``: a Python loop over tasks, each adapted on its own (``[1, ...]`` slices).

Every row's ``tf.function`` is called the way ``MamlTrainer.train_step`` calls its step, on flat
tensors (:class:`trainer.flat_call.FlatCall`), so rows differ in the step only, not in
TensorFlow's per-call dispatch. Tracing is excluded (one warm-up step each); ``--rounds``
timed rounds run every row in turn and rows give the median, with the paired ratio to the
per-task loop (``vs_per_task_loop``).
``--profile`` adds each row's top TensorFlow ops (self time per op type,
:mod:`benchmarks.op_profile`).

Usage: ``python -m benchmarks.train_bench --tasks 32 --support 16 --query 8 --meta-dim 32
--hidden 64 --embedding-dim 16 --steps 20`` prints a JSON list of rows.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from benchmarks.op_profile import top_ops
from limaml.config import MamlConfig, ModelConfig
from schema import features
from trainer import maml
from trainer.flat_call import FlatCall
from trainer.layout import FeatureLayout
from trainer.model import LimamlModel, global_forward, meta_forward, meta_input


def _layout(meta_dim: int, item_vocab: int = 1000) -> FeatureLayout:
    users = list(features.USER_FEATURES)
    sizes = [max(1, meta_dim // len(users))] * len(users)
    sizes[0] += meta_dim - sum(sizes)
    return FeatureLayout(
        meta_categorical=tuple(zip(users, sizes)), meta_multi_hot=(), meta_numeric=(),
        global_categorical=((features.ITEM_ID, item_vocab),),
        global_multi_hot=((features.GENRES, features.encoding(features.GENRES).buckets),),
        global_numeric=(features.RELEASE_YEAR,), use_user_id_in_meta=False, user_id_buckets=1)


def _batch(layout: FeatureLayout, tasks: int, support: int, query: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    out = {}
    for part, n in (("support", support), ("query", query)):
        d = {name: rng.randint(0, v, size=(tasks, n))
             for name, v in layout.meta_categorical + layout.global_categorical}
        d[features.GENRES] = (rng.rand(tasks, n, 64) < 0.05).astype(np.float32)
        d[features.RELEASE_YEAR] = rng.randn(tasks, n).astype(np.float32)
        d["label"] = rng.randint(0, 2, size=(tasks, n)).astype(np.float32)
        d["mask"] = np.ones((tasks, n), np.float32)
        out[part] = {k: tf.constant(v) for k, v in d.items()}
    return out


def _per_task_step(model: LimamlModel, opt: maml.Adam, cfg: MamlConfig, tasks: int):
    variables = model.outer_variables()

    @tf.function
    def step(batch):
        with tf.GradientTape() as outer:
            losses = []
            for t in range(tasks):  # the straightforward way: one task at a time
                one = {p: {k: v[t:t + 1] for k, v in d.items()} for p, d in batch.items()}
                losses.append(maml.maml_loss(model, one, cfg)[0])
            loss = tf.add_n(losses) / float(tasks)
            l2 = model.l2_variables()  # the same objective as the other rows
            if cfg.outer_l2 > 0 and l2:
                loss += cfg.outer_l2 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in l2])
        grads = outer.gradient(loss, variables)
        opt.apply([None if g is None else tf.convert_to_tensor(g) for g in grads])
        return loss
    return step


def _vmap_step(model: LimamlModel, opt: maml.Adam, cfg: MamlConfig):
    """The same MAML step written functionally for one task and vectorized over tasks by
    ``tf.vectorized_map`` (pfor), the way a functional-autodiff library does it (JAX: ``vmap``
    of a per-task loss, then ``grad``). Independent of :mod:`trainer.maml`: parameters are
    explicit tensors, the inner loop is written out here; only the two blocks' forward passes
    (:func:`trainer.model.meta_forward`, :func:`trainer.model.global_forward`) are shared::

        θ_t ← θ − α ∇_θ L_support,t(θ)   (k times),   loss = mean_t L_query,t(θ_t) + λ Σ w²
    """
    variables = model.outer_variables()
    layout, mcfg, act = model.layout, model.model_cfg, model.model_cfg.activation

    def bce(z, part):
        m = tf.cast(part["mask"], z.dtype)
        y = tf.cast(part["label"], z.dtype)
        return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z) * m) / \
            tf.maximum(tf.reduce_sum(m), 1.0)

    def task_loss(meta, glob, one):  # one task: {part: {feature: [n, ...]}}
        s, q = one["support"], one["query"]
        s_x, q_x = meta_input(s, layout, model.dtype), meta_input(q, layout, model.dtype)
        theta = dict(meta)
        for _ in range(cfg.adaptation_steps):
            names = sorted(theta)
            with tf.GradientTape() as inner:
                inner.watch([theta[k] for k in names])
                loss = bce(global_forward(glob, meta_forward(theta, s_x, act), s, layout, mcfg), s)
            grads = inner.gradient(loss, [theta[k] for k in names])
            if cfg.first_order:
                grads = [tf.stop_gradient(g) for g in grads]
            theta = {k: theta[k] - cfg.inner_lr * g for k, g in zip(names, grads)}
        return bce(global_forward(glob, meta_forward(theta, q_x, act), q, layout, mcfg), q)

    @tf.function
    def step(batch):
        with tf.GradientTape() as outer:
            meta = {k: tf.convert_to_tensor(v) for k, v in model.meta_params.items()}
            glob = {k: tf.convert_to_tensor(v) for k, v in model.global_params.items()}
            losses = tf.vectorized_map(lambda one: task_loss(meta, glob, one), batch,
                                       fallback_to_while_loop=False)
            loss = tf.reduce_mean(losses)
            l2 = model.l2_variables()
            if cfg.outer_l2 > 0 and l2:
                loss += cfg.outer_l2 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in l2])
        grads = outer.gradient(loss, variables)
        opt.apply([None if g is None else tf.convert_to_tensor(g) for g in grads])
        return loss
    return step


def run(tasks: int = 32, support: int = 16, query: int = 8, meta_dim: int = 32, hidden: int = 64,
        embedding_dim: int = 16, steps: int = 20,
        adaptation_steps: Sequence[int] = (1, 5), first_order: Sequence[bool] = (False, True),
        impls: Sequence[str] = ("batched", "batched_xla", "vmap", "per_task_loop"),
        profile: bool = False, rounds: int = 1) -> List[Dict[str, object]]:
    """Measures meta-training throughput.

    Every row's step is traced first; then ``rounds`` rounds each time ``steps`` steps of every
    row in turn, so a slow phase of a shared machine falls on all rows of a round alike. A
    row reports the median over rounds, and ``vs_per_task_loop`` the median of the per-round
    ratios to the per-task loop of the same configuration (paired).

    Args:
        tasks: tasks per meta-batch.
        support, query: S and Q.
        meta_dim: width of the dense meta input.
        hidden: hidden width of the meta block and of the global block.
        embedding_dim: E.
        steps: timed outer steps per row and round (after one warm-up step).
        adaptation_steps, first_order, impls: configurations to run.
        profile: also profile ``steps`` more steps of each row (``top_ops``).
        rounds: timed rounds (>= 1).

    Returns:
        Rows ``{"impl", "adaptation_steps", "first_order", "tasks_per_s", "tasks_per_s_rounds",
        ...[, "vs_per_task_loop"][, "top_ops"]}``.
    """
    if rounds < 1 or steps < 1:
        raise ValueError(f"rounds={rounds}, steps={steps}; both must be >= 1")
    layout = _layout(meta_dim)
    # plain MAML on dense meta inputs (no user-id rows), full supports: the same math in both
    mcfg = ModelConfig(meta_hidden=(hidden,), embedding_dim=embedding_dim, global_hidden=(hidden,),
                       categorical_embedding_dim=16, user_id_embedding_dim=0)
    batch = _batch(layout, tasks, support, query)
    rows: List[Dict[str, object]] = []
    fns = []
    for impl in impls:
        for k in adaptation_steps:
            for fo in first_order:
                cfg = MamlConfig(inner_lr=0.1, adaptation_steps=k, first_order=fo,
                                 support_sampling="none", support_shrinkage=0.0)
                model = LimamlModel(layout, mcfg, cfg, seed=0)
                if impl in ("batched", "batched_xla"):
                    trainer = maml.MamlTrainer(model, cfg, jit_compile=impl == "batched_xla")
                    step = trainer._step  # what MamlTrainer.train_step runs
                elif impl == "vmap":
                    step = _vmap_step(model, maml.Adam(model.outer_variables(), cfg.meta_lr), cfg)
                else:
                    step = _per_task_step(model, maml.Adam(model.outer_variables(), cfg.meta_lr),
                                          cfg, tasks)
                if not isinstance(step, FlatCall):  # every row called the same way
                    step = FlatCall(step)
                t0 = time.time()
                first = step(batch)
                tf.nest.map_structure(lambda x: x.numpy(), first)
                rows.append({"impl": impl, "adaptation_steps": k, "first_order": fo,
                             "trace_s": time.time() - t0, "tasks_per_s_rounds": [],
                             "tasks": tasks, "support": support, "query": query,
                             "meta_dim": meta_dim, "hidden": hidden,
                             "embedding_dim": embedding_dim, "rounds": rounds})
                fns.append(step)
    for _ in range(rounds):
        for row, step in zip(rows, fns):
            t0 = time.time()
            for _ in range(steps):
                out = step(batch)
            tf.nest.map_structure(lambda x: x.numpy(), out)
            row["tasks_per_s_rounds"].append(tasks * steps / (time.time() - t0))
    loops = {(r["adaptation_steps"], r["first_order"]): r for r in rows
             if r["impl"] == "per_task_loop"}
    for row, step in zip(rows, fns):
        rates = row["tasks_per_s_rounds"]
        row["tasks_per_s"] = float(np.median(rates))
        row["step_ms"] = 1000.0 * tasks / row["tasks_per_s"]
        loop = loops.get((row["adaptation_steps"], row["first_order"]))
        if loop is not None and loop is not row:
            row["vs_per_task_loop"] = float(np.median(
                np.asarray(rates) / np.asarray(loop["tasks_per_s_rounds"])))
        if profile:
            row["top_ops"] = top_ops(lambda fn=step: fn(batch), calls=steps, k=8)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: prints the rows of :func:`run` as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--support", type=int, default=16)
    p.add_argument("--query", type=int, default=8)
    p.add_argument("--meta-dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--impls", default="batched,batched_xla,vmap,per_task_loop",
                   help="comma-separated implementations")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds, every row in turn each round; rows report the median")
    p.add_argument("--profile", action="store_true",
                   help="add each row's top TensorFlow ops (self time per op type)")
    a = p.parse_args(argv)
    impls = [i.strip() for i in a.impls.split(",") if i.strip()]
    unknown = sorted(set(impls) - {"batched", "batched_xla", "vmap", "per_task_loop"})
    if unknown:
        p.error(f"--impls: unknown {unknown}; choose from batched, batched_xla, vmap, per_task_loop")
    rows = run(a.tasks, a.support, a.query, a.meta_dim, a.hidden, a.embedding_dim, a.steps,
               impls=impls, profile=a.profile, rounds=a.rounds)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
