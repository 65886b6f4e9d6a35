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


def _genre_batch(seed: int = 0):
    """A tiny batch (3 tasks, S=4, Q=3) whose rows carry one of genres 3 and 5, and whose meta
    features (and user hash) are the task's first support row's: one user per task."""
    import tensorflow as tf

    from tests.test_trainer_genre_block import one_hot_genres
    from tests.test_trainer_maml import make_batch

    batch = make_batch(seed)
    s, q = dict(batch["support"]), dict(batch["query"])
    s["genres"] = one_hot_genres([[3, 5, 3, 5], [5, 5, 3, 3], [3, 3, 3, 5]])
    q["genres"] = one_hot_genres([[3, 5, 5], [3, 5, 3], [5, 3, 3]])
    user_feats = ("age_bucket", "gender", "occupation", "zip_prefix", "user_hash")
    s = {k: tf.repeat(v[:, :1], v.shape[1], axis=1) if k in user_feats else v for k, v in s.items()}
    q = {k: tf.repeat(s[k][:, :1], v.shape[1], axis=1) if k in user_feats else v for k, v in q.items()}
    return {"support": s, "query": q}


def test_multi_block_query_predictions_equal_maml_loss_per_row():
    """Per-row probabilities of a multi-block model equal maml_loss's: with one valid query
    position (t, j) the per-task loss is bce(logit, y), so p = exp(-loss) (y = 1) or
    1 - exp(-loss) (y = 0)."""
    import tensorflow as tf

    from tests.test_trainer_genre_block import genre_model
    from trainer import maml

    model = genre_model(steps=2)
    batch = _genre_batch()
    tasks = {p: {k: v.numpy() for k, v in d.items()} for p, d in batch.items()}
    probs, labels, index = evaluate.query_predictions(model, tasks, None)
    q_mask = tasks["query"]["mask"]
    assert probs.shape == (int(q_mask.sum()),)
    expected = np.zeros_like(probs)
    q_len = q_mask.shape[1]
    for j in range(q_len):
        only_j = q_mask * (np.arange(q_len) == j)[None, :]
        one = dict(batch, query=dict(batch["query"], mask=tf.constant(only_j)))
        per_task = maml.maml_loss(model, one, training=False)[1].numpy()
        for row, (t, pos) in enumerate(index):
            if pos == j:
                p_label = np.exp(-per_task[t])
                expected[row] = p_label if labels[row] == 1 else 1.0 - p_label
    np.testing.assert_allclose(probs, expected, rtol=1e-9, atol=1e-12)


def test_multi_block_query_predictions_with_aggregation_are_megs_embeddings():
    """Serving-time behaviour: [aggregate e_user, e_user×g] with e_user×g built as MEG builds it
    (finetune.generate_genre_embeddings on the task's support, the query row's genre)."""
    import tensorflow as tf

    from tests.test_trainer_genre_block import genre_model
    from trainer import finetune, maml
    from trainer.model import global_forward, meta_forward

    model = genre_model(steps=1, seed=3)
    batch = _genre_batch(seed=1)
    tasks = {p: {k: v.numpy() for k, v in d.items()} for p, d in batch.items()}
    probs, _, index = evaluate.query_predictions(model, tasks, "mean")
    s, q = batch["support"], batch["query"]
    adapted = maml.adapt(model, s, 1)
    s_x = model.meta_x(s, model.history_vector(s))
    e_user = maml.aggregate(meta_forward(adapted, s_x, "tanh"), s["mask"], "mean")   # [T, E]
    genres = tf.argmax(q["genres"], axis=-1)                                           # [T, Q]
    e_genre = finetune.generate_genre_embeddings(
        model, {k: v for k, v in s.items() if k != "mask"}, s["mask"], genres, e_user)  # [T, Q, E]
    emb = tf.concat([tf.broadcast_to(e_user[:, None, :], tf.shape(e_genre)), e_genre], -1)
    logits = global_forward(model.global_params, emb, q, model.layout, model.model_cfg).numpy()
    expected = 1.0 / (1.0 + np.exp(-logits[index[:, 0], index[:, 1]]))
    np.testing.assert_allclose(probs, expected, rtol=1e-9, atol=1e-12)
