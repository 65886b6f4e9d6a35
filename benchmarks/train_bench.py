"""Meta-training throughput: the batched trainer vs a per-task Python loop of the same math.

Both implementations run the same model, data and MAML step (inner loop + second- or first-order
outer gradient + Adam) inside one ``tf.function``; the per-task one unrolls a Python loop over
tasks and adapts each task on its own (``[1, ...]`` slices), the batched one adapts all tasks at
once with per-task parameter copies ``[tasks, ...]`` and einsum. Tracing is excluded (one warm-up
step each).

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

from limaml.config import MamlConfig, ModelConfig
from schema import features
from trainer import maml
from trainer.layout import FeatureLayout
from trainer.model import LimamlModel


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
        grads = outer.gradient(loss, variables)
        opt.apply([None if g is None else tf.convert_to_tensor(g) for g in grads])
        return loss
    return step


def run(tasks: int = 32, support: int = 16, query: int = 8, meta_dim: int = 32, hidden: int = 64,
        embedding_dim: int = 16, steps: int = 20,
        adaptation_steps: Sequence[int] = (1, 5), first_order: Sequence[bool] = (False, True),
        impls: Sequence[str] = ("batched", "batched_xla", "per_task_loop")
        ) -> List[Dict[str, object]]:
    """Measures meta-training throughput.

    Args:
        tasks: tasks per meta-batch.
        support, query: S and Q.
        meta_dim: width of the dense meta input.
        hidden: hidden width of the meta block and of the global block.
        embedding_dim: E.
        steps: timed outer steps per configuration (after one warm-up step).
        adaptation_steps, first_order, impls: configurations to run.

    Returns:
        Rows ``{"impl", "adaptation_steps", "first_order", "tasks_per_s", ...}``.
    """
    layout = _layout(meta_dim)
    # plain MAML on dense meta inputs (no user-id rows), full supports: the same math in both
    mcfg = ModelConfig(meta_hidden=(hidden,), embedding_dim=embedding_dim, global_hidden=(hidden,),
                       categorical_embedding_dim=16, user_id_embedding_dim=0)
    batch = _batch(layout, tasks, support, query)
    rows: List[Dict[str, object]] = []
    for impl in impls:
        for k in adaptation_steps:
            for fo in first_order:
                cfg = MamlConfig(inner_lr=0.1, adaptation_steps=k, first_order=fo,
                                 support_sampling="none", support_shrinkage=0.0)
                model = LimamlModel(layout, mcfg, cfg, seed=0)
                if impl in ("batched", "batched_xla"):
                    trainer = maml.MamlTrainer(model, cfg, jit_compile=impl == "batched_xla")
                    step = trainer._step_fn
                else:
                    step = _per_task_step(model, maml.Adam(model.outer_variables(), cfg.meta_lr),
                                          cfg, tasks)
                t0 = time.time()
                first = step(batch)
                tf.nest.map_structure(lambda x: x.numpy(), first)
                warm = time.time() - t0
                t0 = time.time()
                for _ in range(steps):
                    out = step(batch)
                tf.nest.map_structure(lambda x: x.numpy(), out)
                elapsed = time.time() - t0
                rows.append({"impl": impl, "adaptation_steps": k, "first_order": fo,
                             "tasks_per_s": tasks * steps / elapsed,
                             "step_ms": 1000 * elapsed / steps, "trace_s": warm,
                             "tasks": tasks, "support": support, "query": query,
                             "meta_dim": meta_dim, "hidden": hidden,
                             "embedding_dim": embedding_dim})
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
    a = p.parse_args(argv)
    rows = run(a.tasks, a.support, a.query, a.meta_dim, a.hidden, a.embedding_dim, a.steps)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
