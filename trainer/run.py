"""TFX Trainer entry points: ``trainer.run.run_fn`` (LiMAML) and ``trainer.run.baseline_run_fn``.

``fn_args.custom_config``:

* ``limaml_config``: LimamlConfig JSON (``LimamlConfig.to_json()``; a dict is accepted too),
* ``baseline`` (baseline_run_fn): ``"global_dnn"`` or ``"wide_deep"``,
* ``baseline_input`` (baseline_run_fn): ``"transformed_examples"`` (default: fn_args files are
  Transform's gzipped transformed examples) or ``"tasks"`` (task records; every valid support and
  query position becomes one example),
* ``model_version`` (optional): written into ``meta_block.json``.

Vocabulary sizes come from ``TFTransformOutput.vocabulary_size_by_name(f) + 1`` (OOV id).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Dict

import numpy as np
import tensorflow as tf

from limaml.config import LimamlConfig
from schema import features
from trainer import evaluate, export, task_record
from trainer.layout import MASK, QUERY, SUPPORT, USER_HASH, build_layout
from trainer.maml import MamlTrainer
from trainer.model import LimamlModel

log = logging.getLogger(__name__)


def config_from_custom(custom_config: Any) -> LimamlConfig:
    """LimamlConfig from ``custom_config["limaml_config"]`` (JSON string or dict); default if absent."""
    if isinstance(custom_config, str):
        custom_config = json.loads(custom_config)
    raw = (custom_config or {}).get("limaml_config")
    if raw is None:
        return LimamlConfig()
    return LimamlConfig.from_json(raw if isinstance(raw, str) else json.dumps(raw))


def _custom(fn_args) -> Dict[str, Any]:
    cc = getattr(fn_args, "custom_config", None) or {}
    return json.loads(cc) if isinstance(cc, str) else dict(cc)


def vocab_sizes_from_transform(tft_output) -> Dict[str, int]:
    """Categorical feature -> ids incl. the OOV id, read from the Transform output."""
    return {e.name: int(tft_output.vocabulary_size_by_name(e.name)) + 1
            for e in features.ENCODINGS if e.kind == "categorical"}


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy when GPUs are visible, else the default strategy."""
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _files(patterns) -> list:
    if isinstance(patterns, (str, bytes)):
        patterns = [patterns]
    out = []
    for p in patterns or []:
        p = p.decode() if isinstance(p, bytes) else p
        if tf.io.gfile.isdir(p):
            p = os.path.join(p, "*")
        out.extend(tf.io.gfile.glob(p))
    return sorted(set(out))


def _count_records(files) -> int:
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1).numpy())


def _load_tasks_numpy(files, cfg: LimamlConfig) -> Dict[str, Dict[str, np.ndarray]]:
    """All task records of ``files`` as numpy arrays (evaluation / flattening)."""
    ds = task_record.task_dataset(files, cfg.tasks, batch_size=1024, shuffle=False,
                                  drop_remainder=False)
    parts: Dict[str, Dict[str, list]] = {SUPPORT: {}, QUERY: {}}
    for batch in ds:
        for p in (SUPPORT, QUERY):
            for k, v in batch[p].items():
                parts[p].setdefault(k, []).append(v.numpy())
    return {p: {k: np.concatenate(v) for k, v in d.items()} for p, d in parts.items()}


def run_fn(fn_args) -> None:
    """Trains LiMAML on task records and exports ``global_block/`` and ``meta_block/``.

    Args:
        fn_args: TFX FnArgs (train_files, eval_files, transform_output, serving_model_dir,
            model_run_dir, train_steps, custom_config).
    """
    import tensorflow_transform as tft

    custom = _custom(fn_args)
    cfg = config_from_custom(custom)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    layout = build_layout(cfg.model, vocab_sizes_from_transform(tft_output))
    strategy = distribution_strategy()
    train_files = _files(fn_args.train_files)
    with strategy.scope():
        model = LimamlModel(layout, cfg.model, cfg.maml, seed=cfg.train.seed)
        if cfg.model.wide and cfg.train.linear_warm_start:
            from trainer import baselines

            info = baselines.warm_start_limaml(model, _flat_query_rows(train_files, cfg), cfg.train)
            log.info("LiMAML global block warm-started from %s", info)
        trainer = MamlTrainer(model, cfg.maml, strategy=strategy, pretrain_lr=(
            cfg.train.pretrain_lr if cfg.train.pretrain_epochs else None))
        pretrained = tf.Variable(0, dtype=tf.int64, trainable=False, name="pretrained")
    n_tasks = _count_records(train_files)
    global_batch = max(1, min(cfg.train.tasks_per_batch, n_tasks))
    steps = int(getattr(fn_args, "train_steps", 0) or 0) or cfg.train.train_steps or (
        cfg.train.epochs * max(1, math.ceil(n_tasks / global_batch)))
    ds = task_record.task_dataset(train_files, cfg.tasks, global_batch, shuffle=True,
                                  repeat=True, seed=cfg.train.seed)
    ds = ds.map(lambda b: {SUPPORT: b[SUPPORT], QUERY: b[QUERY]})
    dist_ds = strategy.experimental_distribute_dataset(ds)

    run_dir = fn_args.model_run_dir or os.path.join(fn_args.serving_model_dir, "..", "run")
    ckpt = tf.train.Checkpoint(model=model, optimizer=trainer.optimizer, pretrained=pretrained)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"),
                                         max_to_keep=3)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log.info("resumed from %s at step %d", manager.latest_checkpoint,
                 int(trainer.optimizer.iterations.numpy()))
    done = int(trainer.optimizer.iterations.numpy())
    log.info("LiMAML: %d train tasks, batch %d, %d steps (%d done), %d replicas, "
             "adaptation_steps=%d first_order=%s inner_lr=%g learn_inner_lr=%s",
             n_tasks, global_batch, steps, done, strategy.num_replicas_in_sync,
             cfg.maml.adaptation_steps, cfg.maml.first_order, cfg.maml.inner_lr,
             cfg.maml.learn_inner_lr)

    pretrain_steps = cfg.train.pretrain_epochs * max(1, math.ceil(n_tasks / global_batch))
    if pretrain_steps and not int(pretrained.numpy()) and done == 0:
        _pretrain(trainer, dist_ds, pretrain_steps, cfg.train.log_every)
        pretrained.assign(1)
        manager.save(checkpoint_number=0)

    def on_step(step: int, loss: float) -> None:
        if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
            manager.save(checkpoint_number=step)

    if steps > done:
        trainer.fit(dist_ds, steps - done, log_every=cfg.train.log_every, on_step=on_step)
    manager.save(checkpoint_number=int(trainer.optimizer.iterations.numpy()))

    metrics: Dict[str, Any] = {"train_tasks": n_tasks, "steps": steps}
    eval_files = _files(getattr(fn_args, "eval_files", None))
    if eval_files:
        tasks = _load_tasks_numpy(eval_files, cfg)
        for agg in (None, cfg.embeddings.aggregation):
            probs, labels, _ = evaluate.query_predictions(model, tasks, agg)
            metrics[f"query_{agg or 'per_sample'}"] = evaluate.summary(labels, probs)
        probs, labels, _ = evaluate.query_predictions(model, tasks, None, steps=0)
        metrics["query_unadapted"] = evaluate.summary(labels, probs)
        log.info("LiMAML eval: %s", json.dumps(metrics))
    tf.io.gfile.makedirs(run_dir)
    with tf.io.gfile.GFile(os.path.join(run_dir, "metrics.json"), "w") as f:
        f.write(json.dumps(metrics, indent=2))

    export_model(fn_args.serving_model_dir, model, cfg, tft_output,
                 model_version=custom.get("model_version"))


def _pretrain(trainer: MamlTrainer, batches, steps: int, log_every: int) -> None:
    """Supervised pre-training (``TrainConfig.pretrain_epochs``) before meta-training."""
    it = iter(batches)
    losses = []
    for i in range(steps):
        losses.append(trainer.pretrain_step(next(it)))
        if log_every and ((i + 1) % log_every == 0 or i == steps - 1):
            log.info("pre-training step %d/%d: loss %.4f (mean of last %d %.4f)", i + 1, steps,
                     losses[-1], len(losses[-log_every:]), float(np.mean(losses[-log_every:])))


def export_model(serving_model_dir: str, model: LimamlModel, cfg: LimamlConfig, tft_output,
                 model_version=None) -> None:
    """Writes ``<serving_model_dir>/global_block`` and ``<serving_model_dir>/meta_block``."""
    export.export_global_block(os.path.join(serving_model_dir, "global_block"), model, tft_output)
    export.export_meta_block(os.path.join(serving_model_dir, "meta_block"), model, cfg,
                             model_version)


def _flat_from_transformed(files, tft_output) -> Dict[str, np.ndarray]:
    spec = tft_output.transformed_feature_spec()
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096).map(
        lambda s: tf.io.parse_example(s, spec))
    cols: Dict[str, list] = {}
    for b in ds:
        for k, v in b.items():
            if isinstance(v, tf.SparseTensor):
                continue
            cols.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


def _flat_from_tasks(files, cfg: LimamlConfig) -> Dict[str, np.ndarray]:
    tasks = _load_tasks_numpy(files, cfg)
    out: Dict[str, list] = {}
    for p in (SUPPORT, QUERY):
        m = tasks[p][MASK] > 0
        for k, v in tasks[p].items():
            if k != MASK:
                out.setdefault(k, []).append(v[m])
    return {k: np.concatenate(v) for k, v in out.items()}


def _flat_query_rows(files, cfg: LimamlConfig) -> Dict[str, np.ndarray]:
    """Every valid query position of the task records as one flat row (each interaction is a
    query of at most one task), with ``user_id`` = the user hash (for the validation rows)."""
    tasks = _load_tasks_numpy(files, cfg)
    q = tasks[QUERY]
    m = q[MASK] > 0
    out = {k: v[m] for k, v in q.items() if k != MASK}
    out[features.USER_ID] = out[USER_HASH].astype(str).astype(object)
    return out


def baseline_run_fn(fn_args) -> None:
    """Trains a baseline (``custom_config["baseline"]``) and exports ``global_block/``.

    The exported SavedModel has the LiMAML serving contract (``serving_default`` on serialized
    examples, ``predict_dense``); its ``meta_embedding`` input is optional and ignored.
    """
    import tensorflow_transform as tft

    from trainer import baselines

    custom = _custom(fn_args)
    cfg = config_from_custom(custom)
    kind = custom.get("baseline", "global_dnn")
    source = custom.get("baseline_input", "transformed_examples")
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    layout = build_layout(cfg.model, vocab_sizes_from_transform(tft_output))
    load = ((lambda f: _flat_from_tasks(f, cfg)) if source == "tasks"
            else (lambda f: _flat_from_transformed(f, tft_output)))
    data = load(_files(fn_args.train_files))
    eval_files = _files(getattr(fn_args, "eval_files", None))
    model = baselines.make_baseline(kind, layout, cfg.model, seed=cfg.train.seed)
    start = time.time()
    history = baselines.fit_baseline(model, data, cfg.train)
    log.info("baseline %s trained in %.1fs: %s", kind, time.time() - start, history)
    metrics: Dict[str, Any] = {"baseline": kind, "history": history}
    if eval_files:
        ev = load(eval_files)
        logits = baselines.predict_logits(model, ev)
        metrics["eval"] = evaluate.summary(ev[features.LABEL], 1 / (1 + np.exp(-logits)))
        log.info("baseline %s eval: %s", kind, metrics["eval"])
    run_dir = fn_args.model_run_dir or fn_args.serving_model_dir
    tf.io.gfile.makedirs(run_dir)
    with tf.io.gfile.GFile(os.path.join(run_dir, "metrics.json"), "w") as f:
        f.write(json.dumps(metrics, indent=2, default=float))
    export.export_baseline(os.path.join(fn_args.serving_model_dir, "global_block"), model,
                           tft_output, cfg.model.embedding_dim)
