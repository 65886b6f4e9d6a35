"""benchmarks/train_bench.py and benchmarks/op_profile.py: the vectorized-map step (an
independent functional implementation) takes the same MAML step as the trainer, and the op
profile reads TensorFlow's profiler output correctly (hand-encoded records, a planted op)."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import op_profile, train_bench
from limaml.config import MamlConfig, ModelConfig
from trainer import maml
from trainer.model import LimamlModel


@pytest.mark.parametrize("impl", ["vmap", "per_task_loop"])
@pytest.mark.parametrize("steps,first_order", [(1, False), (2, False), (2, True)])
def test_other_steps_equal_the_trainers_step(impl, steps, first_order):
    """Same loss (with the outer L2 penalty) and same parameters after one step."""
    layout = train_bench._layout(8, item_vocab=20)
    mcfg = ModelConfig(meta_hidden=(6,), embedding_dim=4, global_hidden=(5,),
                       categorical_embedding_dim=3, user_id_embedding_dim=0)
    cfg = MamlConfig(inner_lr=0.2, adaptation_steps=steps, first_order=first_order,
                     support_sampling="none", support_shrinkage=0.0)
    batch = train_bench._batch(layout, tasks=5, support=6, query=4, seed=3)
    ours, theirs = (LimamlModel(layout, mcfg, cfg, seed=1, dtype=tf.float64) for _ in range(2))
    trainer_loss, finite = maml.MamlTrainer(ours, cfg)._step_fn(batch)
    assert cfg.outer_l2 > 0  # the penalty is part of what is compared
    opt = maml.Adam(theirs.outer_variables(), cfg.meta_lr)
    step = (train_bench._vmap_step(theirs, opt, cfg) if impl == "vmap"
            else train_bench._per_task_step(theirs, opt, cfg, tasks=5))
    other_loss = step(batch)
    assert bool(finite)
    assert float(trainer_loss) == pytest.approx(float(other_loss), rel=1e-10)
    moved = 0.0
    for a, b, v0 in zip(ours.outer_variables(), theirs.outer_variables(),
                        LimamlModel(layout, mcfg, cfg, seed=1, dtype=tf.float64).outer_variables()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-7, atol=1e-10, err_msg=a.name)
        moved = max(moved, float(np.abs(a.numpy() - v0.numpy()).max()))
    assert moved > 1e-5  # the step did move the parameters


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _record(op_type: str, op_name: str, occurrences: int, self_us: float) -> bytes:
    return (_len_field(2, b"Host") + _len_field(3, op_type.encode()) + _len_field(4, op_name.encode())
            + _varint(5 << 3 | 0) + _varint(occurrences)
            + _varint(6 << 3 | 1) + struct.pack("<d", 999.0)        # total time: not read
            + _varint(8 << 3 | 1) + struct.pack("<d", self_us))


def test_parse_tf_stats_reads_hand_encoded_records():
    records = [_record("MatMul", "a", 3, 300.0), _record("Add", "b", 2, 50.0), _record("MatMul", "c", 1, 100.0)]
    with_idle = _len_field(1, _record("IDLE", "IDLE", 1, 1e6))
    without_idle = b"".join(_len_field(1, r) for r in records)
    data = _len_field(4, with_idle) + _len_field(5, without_idle) + _len_field(6, b"CPU")
    rows = op_profile.parse_tf_stats(data)
    assert [(r["op_type"], r["op_name"], r["occurrences"], r["self_us"]) for r in rows] == [
        ("MatMul", "a", 3, 300.0), ("Add", "b", 2, 50.0), ("MatMul", "c", 1, 100.0)]
    top = op_profile.summarize(rows, k=5)
    assert top == [{"op_type": "MatMul", "self_ms": 0.4, "share": 0.8889, "occurrences": 4},
                   {"op_type": "Add", "self_ms": 0.05, "share": 0.1111, "occurrences": 2}]


def test_top_ops_finds_the_planted_matmul():
    @tf.function
    def f(x):
        for _ in range(3):
            x = tf.nn.relu(tf.matmul(x, x) * 0.01)
        return tf.reduce_sum(x)

    x = tf.random.stateless_normal([192, 192], seed=[1, 2])
    f(x)  # traced outside the profile
    top = op_profile.top_ops(lambda: f(x), calls=7, k=3)
    assert "MatMul" in top[0]["op_type"] and top[0]["occurrences"] == 21  # 3 per call
    assert top[0]["share"] > 0.5


def test_rounds_interleave_rows_and_pair_the_ratio():
    """Each row is timed once per round; a row's rate is the median of its rounds and its
    ratio to the per-task loop the median of the per-round ratios (not a ratio of medians)."""
    rows = train_bench.run(tasks=2, support=3, query=2, meta_dim=4, hidden=4, embedding_dim=2,
                           steps=1, adaptation_steps=(1,), first_order=(True,),
                           impls=("batched", "per_task_loop"), rounds=3)
    batched, loop = rows
    assert len(batched["tasks_per_s_rounds"]) == len(loop["tasks_per_s_rounds"]) == 3
    assert batched["tasks_per_s"] == sorted(batched["tasks_per_s_rounds"])[1]
    ratios = sorted(b / p for b, p in zip(batched["tasks_per_s_rounds"], loop["tasks_per_s_rounds"]))
    assert batched["vs_per_task_loop"] == pytest.approx(ratios[1], rel=1e-12)
    assert "vs_per_task_loop" not in loop
    with pytest.raises(ValueError, match="rounds=0"):
        train_bench.run(rounds=0)
