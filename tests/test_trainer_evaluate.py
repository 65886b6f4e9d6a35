"""``trainer.evaluate.query_predictions`` compiles once per (steps, aggregation): batches of any
task count reuse the trace, so the trainer's evaluations raise no tf.function retracing warning."""
from __future__ import annotations

import numpy as np

from tests.test_trainer_maml import VOCABS, tiny_model
from trainer import evaluate


def _tasks(n_tasks: int, size: int, seed: int = 0):
    rng = np.random.RandomState(seed)

    def part():
        d = {f: rng.randint(0, v, size=(n_tasks, size)) for f, v in VOCABS.items()}
        d["genres"] = (rng.rand(n_tasks, size, 64) < 0.1).astype(np.float32)
        d["release_year"] = rng.randn(n_tasks, size).astype(np.float32)
        d["user_hash"] = np.repeat(rng.randint(0, 8, size=(n_tasks, 1)), size, axis=1)
        d["label"] = rng.randint(0, 2, size=(n_tasks, size)).astype(np.float32)
        d["mask"] = (np.arange(size)[None, :] < rng.randint(1, size + 1, (n_tasks, 1))).astype(np.float32)
        return d

    return {"support": part(), "query": part()}


def test_query_predictions_trace_once_per_setting_without_retracing_warning():
    model = tiny_model(steps=1)
    tasks = _tasks(5, 3)
    # TF's retracing warning counts traces per code object across every model of the process
    # (all of a test session's models share `logits`' code), so the check is on this model's
    # own trace counts: one per setting, whatever the batch sizes and however many calls.
    results = {}
    for _ in range(2):  # the trainer evaluates more than once
        for agg, steps in ((None, None), ("mean", None), (None, 0)):
            # 5 tasks in batches of 2, 2, 1: the last batch is smaller
            results[(agg, steps)] = evaluate.query_predictions(model, tasks, agg, steps=steps,
                                                               batch_size=2)
    fns = list(model.__dict__["_eval_cache"].values())
    assert len(fns) == 3
    assert [f.experimental_get_tracing_count() for f in fns] == [1, 1, 1]
    # the same predictions as one batch holding every task
    one_batch = evaluate.query_predictions(model, tasks, "mean", batch_size=8)
    np.testing.assert_allclose(results[("mean", None)][0], one_batch[0], rtol=1e-12)
    n_query = int(tasks["query"]["mask"].sum())
    assert results[(None, 0)][0].shape == (n_query,)
