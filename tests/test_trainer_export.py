"""Transform contract + TFX run_fn + SavedModel round trip, with a tiny real tft_beam run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from limaml.config import LimamlConfig, MamlConfig, ModelConfig, TaskConfig, TrainConfig
from limaml.data.synthetic import SyntheticConfig, generate
from schema import features
from trainer import export, finetune, preprocessing, run, task_record
from trainer.layout import USER_HASH
from trainer.model import global_forward
from trainer.tasks import build_tasks

TASKS = TaskConfig(support_size=6, query_size=4, max_tasks_per_user=2)


def _config() -> LimamlConfig:
    return LimamlConfig(
        model=ModelConfig(meta_hidden=(8,), embedding_dim=4, global_hidden=(16,),
                          categorical_embedding_dim=4, user_id_buckets=64),
        maml=MamlConfig(inner_lr=0.3, adaptation_steps=1, meta_lr=3e-3),
        tasks=TASKS,
        train=TrainConfig(tasks_per_batch=16, train_steps=12, log_every=5, checkpoint_every=5,
                          baseline_epochs=2, baseline_batch_size=64))


def _example(row, spec) -> bytes:
    feats = {}
    for k, v in row.items():
        if k not in spec:
            continue
        dt = spec[k].dtype
        v = np.asarray(v).reshape(-1)
        if dt == tf.string:
            feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[x if isinstance(x, bytes) else str(x).encode() for x in v]))
        elif dt == tf.int64:
            feats[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=v.astype(np.int64)))
        else:
            feats[k] = tf.train.Feature(float_list=tf.train.FloatList(value=v.astype(np.float32)))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata

    root = str(tmp_path_factory.mktemp("trainer_export"))
    frame = generate(SyntheticConfig(num_users=60, num_items=40, mean_interactions=15,
                                     sigma_interactions=0.3, seed=3))
    raw_spec = preprocessing.raw_feature_spec()
    cols = list(raw_spec)
    raw = [{k: (r[k].encode() if isinstance(r[k], str) else r[k]) for k in cols}
           for r in frame[cols].to_dict("records")]
    meta = dataset_metadata.DatasetMetadata.from_feature_spec(raw_spec)
    cfg = _config()
    transform_dir = os.path.join(root, "transform")
    with tft_beam.Context(temp_dir=os.path.join(root, "tmp")):
        (transformed, tmeta), transform_fn = ((raw, meta) | tft_beam.AnalyzeAndTransformDataset(
            lambda x: preprocessing.preprocessing_fn(
                x, {"limaml_config": cfg.to_json()})))
        _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    # TFX's Transform component also writes the raw metadata; serving parses with it.
    from tensorflow_transform.tf_metadata import metadata_io
    metadata_io.write_metadata(meta, os.path.join(transform_dir,
                                                  tft.TFTransformOutput.RAW_METADATA_DIR))
    tft_output = tft.TFTransformOutput(transform_dir)
    # Encoded table from the real transform output.
    table = {k: np.stack([np.asarray(t[k]) for t in transformed]) for k in transformed[0]}
    table = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in table.items()}
    table[features.USER_ID] = table[features.USER_ID].astype(object)
    order = np.lexsort((table[features.TIMESTAMP], table[features.USER_ID]))
    table = {k: v[order] for k, v in table.items()}
    raw_sorted = [raw[i] for i in order]
    tasks = build_tasks(table, features.USER_ID, TASKS,
                        [k for k in table if k != features.USER_ID])
    uh = tasks["support"][USER_HASH][:, 0]
    recs = task_record.encode_tasks(tasks, tasks["user"], uh)
    task_record.write_tasks(os.path.join(root, "train.tfrecord.gz"), recs[: len(recs) * 3 // 4])
    task_record.write_tasks(os.path.join(root, "eval.tfrecord.gz"), recs[len(recs) * 3 // 4:])
    tspec = tft_output.transformed_feature_spec()
    with tf.io.TFRecordWriter(os.path.join(root, "examples.tfrecord.gz"), "GZIP") as w:
        for i in range(len(order)):
            w.write(_example({k: v[i] for k, v in table.items()}, tspec))
    return types.SimpleNamespace(root=root, cfg=cfg, tft_output=tft_output, table=table,
                                 raw=raw_sorted, raw_spec=raw_spec, tasks=tasks, frame=frame)


def _fn_args(p, out, **kw):
    base = dict(train_files=[os.path.join(p.root, "train.tfrecord.gz")],
                eval_files=[os.path.join(p.root, "eval.tfrecord.gz")],
                transform_output=os.path.join(p.root, "transform"),
                serving_model_dir=os.path.join(out, "serving"),
                model_run_dir=os.path.join(out, "run"), train_steps=None,
                custom_config={"limaml_config": p.cfg.to_json(), "model_version": "v1"})
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_transform_matches_local_encoder_contract(pipeline):
    from trainer.local_encoder import LocalEncoder
    t = pipeline.table
    enc = LocalEncoder(pipeline.cfg.model.user_id_buckets).fit(pipeline.frame)
    local = enc.encode(pipeline.frame)  # sorted the same way (user, time)
    np.testing.assert_array_equal(local[USER_HASH], t[USER_HASH])
    np.testing.assert_array_equal(local[features.GENRES], t[features.GENRES])
    np.testing.assert_allclose(local[features.RELEASE_YEAR], t[features.RELEASE_YEAR], atol=1e-4)
    for f, size in run.vocab_sizes_from_transform(pipeline.tft_output).items():
        assert size == enc.vocab_sizes[f]
        assert t[f].max() < size


def test_run_fn_exports_serving_contract_and_resumes(pipeline, tmp_path):
    out = str(tmp_path)
    run.run_fn(_fn_args(pipeline, out))
    ckdir = os.path.join(out, "run", "checkpoints")
    assert tf.train.latest_checkpoint(ckdir).endswith("-12")
    metrics = json.load(open(os.path.join(out, "run", "metrics.json")))
    assert 0.0 <= metrics["query_per_sample"]["auc"] <= 1.0
    # resume: 8 more steps from the last checkpoint
    cfg2 = pipeline.cfg.to_json()
    run.run_fn(_fn_args(pipeline, out, train_steps=20,
                        custom_config={"limaml_config": cfg2}))
    assert tf.train.latest_checkpoint(ckdir).endswith("-20")

    serving = os.path.join(out, "serving")
    model, cfg, info = export.load_meta_block(os.path.join(serving, "meta_block"))
    assert info["adaptation"]["adaptation_steps"] == 1 and info["embedding_dim"] == 4
    loaded = tf.saved_model.load(os.path.join(serving, "global_block"))
    n = 25
    rng = np.random.RandomState(0)
    emb = rng.randn(n, 4).astype(np.float32)
    spec = dict(pipeline.raw_spec)
    spec.pop(features.LABEL)
    spec[features.META_EMBEDDING] = tf.io.FixedLenFeature([4], tf.float32)
    rows = [dict(pipeline.raw[i], meta_embedding=emb[i]) for i in range(n)]
    serialized = tf.constant([_example(r, spec) for r in rows])
    got = loaded.signatures["serving_default"](examples=serialized)["probabilities"].numpy()
    t = {k: v[:n] for k, v in pipeline.table.items() if v.dtype != object}
    expected = tf.sigmoid(global_forward(model.global_params, tf.constant(emb), t, model.layout,
                                         model.model_cfg)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    dense_in = {k: tf.constant(t[k]) for k in model.layout.global_feature_names}
    dense = loaded.signatures["predict_dense"](meta_embedding=tf.constant(emb), **dense_in)
    np.testing.assert_allclose(dense["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    # predict_raw takes the raw columns of the encoded features the global block reads (named
    # alike in this schema), none of the user's meta features, and scores like the others
    raw_sig = loaded.signatures[export.RAW_SIGNATURE]
    raw_spec = raw_sig.structured_input_signature[1]
    assert set(raw_spec) == set(model.layout.global_feature_names) | {features.META_EMBEDDING}
    assert not set(raw_spec) & (set(features.USER_FEATURES) | {features.USER_ID})
    _assert_raw_scores(raw_sig, rows, expected)
    _assert_warmup_records(os.path.join(serving, "global_block"), raw_sig)
    # meta block: SavedModel generate == Python fine-tuning of the restored model
    mb = tf.saved_model.load(os.path.join(serving, "meta_block"))
    sup = {k: tf.constant(v[:5]) for k, v in pipeline.tasks["support"].items()
           if k != "mask" and v.dtype != object and k != features.TIMESTAMP}
    mask = tf.constant(pipeline.tasks["support"]["mask"][:5])
    a = mb.generate(sup, mask).numpy()
    b = finetune.generate_meta_embeddings(model, sup, mask, cfg.embeddings.aggregation).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    cs = mb.cold_start({k: sup[k][:, 0] for k in model.layout.meta_feature_names}).numpy()
    assert cs.shape == (5, 4)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", os.path.join(serving, "global_block"), "--all"],
                           capture_output=True, text=True, check=True).stdout
    assert "signature_def['serving_default']" in shown
    assert "signature_def['predict_dense']" in shown


@pytest.mark.parametrize("kind,source", [("wide_deep", "transformed_examples"),
                                         ("global_dnn", "tasks")])
def test_baseline_run_fn_exports_same_contract(pipeline, tmp_path, kind, source):
    out = str(tmp_path)
    files = ([os.path.join(pipeline.root, "examples.tfrecord.gz")]
             if source == "transformed_examples" else None)
    kw = dict(custom_config={"limaml_config": pipeline.cfg.to_json(), "baseline": kind,
                             "baseline_input": source})
    if files:
        kw.update(train_files=files, eval_files=files)
    run.baseline_run_fn(_fn_args(pipeline, out, **kw))
    loaded = tf.saved_model.load(os.path.join(out, "serving", "global_block"))
    spec = dict(pipeline.raw_spec)
    spec.pop(features.LABEL)
    serialized = tf.constant([_example(r, spec) for r in pipeline.raw[:7]])  # no meta_embedding
    p = loaded.signatures["serving_default"](examples=serialized)["probabilities"].numpy()
    assert p.shape == (7,) and np.all((p > 0) & (p < 1))
    assert "predict_dense" in loaded.signatures
    # a wide & deep baseline reads the user id (hashed by the Transform): predict_raw keeps it
    raw_sig = loaded.signatures[export.RAW_SIGNATURE]
    assert (features.USER_ID in raw_sig.structured_input_signature[1]) == (kind == "wide_deep")
    rows = [dict(r, meta_embedding=np.zeros(4, np.float32)) for r in pipeline.raw[:7]]
    _assert_raw_scores(raw_sig, rows, p)


def _assert_warmup_records(model_dir, raw_sig) -> None:
    """The export's TF Serving warm-up file: one ``predict_raw`` request of 1 blank row and one
    of 16, carrying exactly the signature's inputs, each of which the signature answers."""
    from tensorflow_serving.apis import prediction_log_pb2

    spec = raw_sig.structured_input_signature[1]
    path = os.path.join(model_dir, "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r)
            for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    assert len(logs) == 2
    for log, n in zip(logs, (1, 16)):
        request = log.predict_log.request
        assert request.model_spec.signature_name == export.RAW_SIGNATURE
        assert set(request.inputs) == set(spec)
        feeds = {k: tf.constant(tf.make_ndarray(v), dtype=spec[k].dtype)
                 for k, v in request.inputs.items()}
        for k, t in feeds.items():
            assert t.shape[0] == n and (t.shape.rank == 1 or k == features.META_EMBEDDING)
            assert not np.any(t.numpy()) if t.dtype != tf.string else set(t.numpy()) == {b""}
        p = raw_sig(**feeds)["probabilities"].numpy()
        assert p.shape == (n,) and np.all(np.isfinite(p))


def _assert_raw_scores(raw_sig, rows, expected) -> None:
    """``predict_raw`` on the rows' raw columns (those it takes) scores ``expected``."""
    inputs = {}
    for name, ts in raw_sig.structured_input_signature[1].items():
        values = [r[name] for r in rows]
        inputs[name] = tf.constant(np.stack(values) if name == features.META_EMBEDDING
                                   else np.asarray(values), dtype=ts.dtype)
    got = raw_sig(**inputs)["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


class _DependencyTransform:
    """A Transform whose outputs need the raw columns listed (what ``outputs_from`` asks)."""

    DEPS = {"a_enc": {"a"}, "ab_cross": {"a", "b"}, "c_enc": {"c"}, "d_default": {"d"}}

    def __init__(self, knows: bool = True):
        self.knows, self.asked = knows, []

    def outputs_from(self, names):
        self.asked.append(tuple(names))
        if not self.knows:
            return None
        return {out for out, deps in self.DEPS.items() if deps <= set(names)}


@pytest.mark.parametrize("wanted,kept", [
    ({"a_enc"}, ("a",)),
    ({"ab_cross"}, ("a", "b")),
    ({"a_enc", "c_enc"}, ("a", "c")),
    ({"ab_cross", "c_enc"}, ("a", "b", "c")),
    ({"d_default"}, None),           # needs a column that is not a raw input
    ({"z"}, None),                   # nothing makes it
])
def test_needed_raw_names_keeps_only_what_the_wanted_outputs_depend_on(wanted, kept):
    assert export.needed_raw_names(_DependencyTransform(), ("a", "b", "c"), wanted) == kept


def test_needed_raw_names_keeps_everything_when_the_transform_cannot_say():
    transform = _DependencyTransform(knows=False)
    assert export.needed_raw_names(transform, ("a", "b", "c"), {"a_enc"}) is None
    assert transform.asked == [("a", "b", "c")]


def test_run_fn_pretrains_once_then_meta_trains_and_a_resume_skips_pretraining(pipeline, tmp_path,
                                                                                monkeypatch):
    import dataclasses

    out = str(tmp_path)
    cfg = pipeline.cfg
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, pretrain_epochs=1,
                                                             pretrain_lr=0.01))
    calls = []
    real = run._pretrain
    monkeypatch.setattr(run, "_pretrain", lambda *a: (calls.append(a[2]), real(*a)))
    run.run_fn(_fn_args(pipeline, out, custom_config={"limaml_config": cfg.to_json()}))
    n_tasks = sum(1 for _ in tf.data.TFRecordDataset(os.path.join(pipeline.root, "train.tfrecord.gz"),
                                                     compression_type="GZIP"))
    assert calls == [-(-n_tasks // cfg.train.tasks_per_batch)]  # one epoch of task batches
    ckdir = os.path.join(out, "run", "checkpoints")
    latest = tf.train.latest_checkpoint(ckdir)
    assert latest.endswith("-12")
    assert tf.train.load_variable(latest, "pretrained/.ATTRIBUTES/VARIABLE_VALUE") == 1
    run.run_fn(_fn_args(pipeline, out, train_steps=15, custom_config={"limaml_config": cfg.to_json()}))
    assert len(calls) == 1 and tf.train.latest_checkpoint(ckdir).endswith("-15")
