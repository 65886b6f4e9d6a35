"""End to end: the whole pipeline once (shared fixture), checked through ML Metadata and against
numbers worked out independently from the prepared data."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from sklearn.metrics import roc_auc_score

from components.common.model_layout import meta_block_dir
from embeddings.parquet_store import ParquetEmbeddingStore
from limaml.data import canonical, protocols
from pipeline.settings import COMPONENT_IDS
from report.metrics import validate_metrics
from schema import features as F
from tests.pipeline_fixtures import E2E_CONFIG

pytestmark = pytest.mark.e2e

TRAINED_MODELS = ("limaml", "global_dnn", "wide_deep_id", "linear", "linear_user_id")


def _store(run):
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = run.metadata_path
    return metadata_store.MetadataStore(cfg)


def _artifacts(store, type_name):
    return sorted(store.get_artifacts_by_type(type_name), key=lambda a: a.id)


@pytest.fixture(scope="module")
def split(pipeline_run):
    frame = canonical.read_prepared(pipeline_run.data_dir)
    return protocols.apply(frame, pipeline_run.config.protocol)


@pytest.fixture(scope="module")
def metrics(pipeline_run):
    with open(os.path.join(pipeline_run.paths.report_dir, "metrics.json")) as f:
        return json.load(f)


def test_every_component_executed(pipeline_run):
    store = _store(pipeline_run)
    ok = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
    done = set()
    for ctx in store.get_contexts_by_type("node"):
        if any(e.last_known_state in ok for e in store.get_executions_by_context(ctx.id)):
            done.add(ctx.name.split(".")[-1])
    assert done == set(COMPONENT_IDS)


def test_metrics_json_shape_and_counts(metrics, split):
    validate_metrics(metrics)
    assert (metrics["dataset"], metrics["protocol"]) == ("synthetic", "cutoff")
    query = split.interactions[split.interactions[protocols.ROLE] == "query"]
    assert set(metrics["models"]) == set(TRAINED_MODELS) | {"oracle"}
    for model in (*TRAINED_MODELS, "oracle"):
        overall = metrics["models"][model]["overall"]
        assert overall["examples"] == len(query)
        assert overall["users"] == len(split.users)
        for cohort, s in metrics["models"][model]["cohorts"].items():
            members = split.users[split.users[protocols.COHORT] == cohort]
            assert s["users"] == len(members), (model, cohort)
            assert s["examples"] == int(members["query_size"].sum()), (model, cohort)
            if s["auc"] is not None:
                lo, hi = s["auc_ci95"]
                assert lo <= s["auc"] <= hi


def test_oracle_auc_matches_true_probabilities(metrics, split):
    query = split.interactions[split.interactions[protocols.ROLE] == "query"]
    want = roc_auc_score(query[F.LABEL], query[F.ORACLE_PROB])
    assert metrics["models"]["oracle"]["overall"]["auc"] == pytest.approx(want, abs=2e-3)
    # No model beats the oracle beyond TFMA's threshold approximation.
    for model in TRAINED_MODELS:
        assert metrics["models"][model]["overall"]["auc"] <= want + 2e-3


@pytest.fixture(scope="module")
def per_row(pipeline_run):
    import pandas as pd

    from components.report.executor import PER_ROW_SCORES

    return pd.read_parquet(os.path.join(pipeline_run.paths.report_dir, PER_ROW_SCORES))


def test_per_row_scores_are_the_query_rows_and_agree_with_tfma(per_row, metrics, split):
    """The Report's per-row predictions (each served model called on the joined query examples)
    cover exactly the query rows, and sklearn's exact AUC on them matches TFMA's (10k thresholds)."""
    query = split.interactions[split.interactions[protocols.ROLE] == "query"]
    assert len(per_row) == len(query)
    got = sorted(zip(per_row[F.USER_ID].astype(str), per_row[F.LABEL].astype(int)))
    want = sorted(zip(query[F.USER_ID].astype(str), query[F.LABEL].astype(int)))
    assert got == want
    cohort_of_user = dict(zip(split.users[F.USER_ID].astype(str), split.users[protocols.COHORT].astype(str)))
    assert (per_row[F.COHORT].astype(str) == per_row[F.USER_ID].astype(str).map(cohort_of_user)).all()
    for model in TRAINED_MODELS:
        scores = per_row[model].to_numpy()
        assert np.isfinite(scores).all() and 0.0 <= scores.min() and scores.max() <= 1.0, model
        exact = roc_auc_score(per_row[F.LABEL], scores)
        assert exact == pytest.approx(metrics["models"][model]["overall"]["auc"], abs=5e-3), model


def test_paired_comparisons_against_every_model(metrics, per_row, split):
    """``comparisons`` holds limaml_vs_<m> for every other trained model (never the oracle), overall
    and per cohort, with the counts of the query rows and delta = the AUC difference on them."""
    cohorts = protocols.cohort_names(E2E_CONFIG.protocol.cohort_edges)
    comparisons = metrics["comparisons"]
    assert set(comparisons) == {f"limaml_vs_{m}" for m in TRAINED_MODELS if m != "limaml"}
    reference_auc = roc_auc_score(per_row[F.LABEL], per_row["limaml"])
    for model in TRAINED_MODELS[1:]:
        entry = comparisons[f"limaml_vs_{model}"]
        assert set(entry["cohorts"]) == set(cohorts)
        overall = entry["overall"]
        assert overall["examples"] == len(per_row) and overall["users"] == len(split.users)
        assert overall["resamples"] == 1000
        want = reference_auc - roc_auc_score(per_row[F.LABEL], per_row[model])
        assert overall["delta"] == pytest.approx(want, abs=1e-9), model
        lo, hi = overall["ci95"]
        assert lo <= hi and 0.0 <= overall["p_value"] <= 1.0
        for cohort in cohorts:
            c = entry["cohorts"][cohort]
            members = split.users[split.users[protocols.COHORT] == cohort]
            assert c["users"] == len(members), (model, cohort)
            assert c["examples"] == int(members["query_size"].sum()), (model, cohort)


def test_blessing_follows_the_threshold_and_push(pipeline_run, metrics):
    store = _store(pipeline_run)
    blessings = _artifacts(store, "ModelBlessing")
    limaml_blessing = [b for b in blessings if "EvaluatorLimaml" in b.uri]
    assert len(limaml_blessing) == 1
    blessed = limaml_blessing[0].custom_properties["blessed"].int_value == 1
    ev = pipeline_run.config.evaluation
    limaml, wide = (metrics["models"][m]["overall"]["auc"] for m in ("limaml", "wide_deep_id"))
    expected = limaml >= ev.min_auc and limaml - wide >= ev.min_auc_change
    assert blessed == expected, (limaml, wide)
    pushed = _artifacts(store, "PushedModel")[-1]
    assert pushed.custom_properties["pushed"].int_value == int(blessed)


def test_pushed_model_is_in_tf_serving_layout(pipeline_run):
    store = _store(pipeline_run)
    model = [m for m in _artifacts(store, "Model") if "LimamlTrainer" in m.uri][-1]
    base = pipeline_run.paths.serving_base
    versions = [d for d in os.listdir(base) if not d.startswith(".")]
    assert versions == [str(model.id)]  # integer version folder = the trained model's id
    folder = os.path.join(base, versions[0])
    assert os.path.exists(os.path.join(folder, "saved_model.pb"))
    assert os.path.isdir(os.path.join(folder, "variables"))
    assert os.path.exists(os.path.join(meta_block_dir(folder), "meta_block.json"))
    loaded = tf.saved_model.load(folder)
    sig = loaded.signatures["serving_default"]
    assert list(sig.structured_input_signature[1]) == ["examples"]
    assert list(sig.structured_outputs) == ["probabilities"]


def test_embeddings_for_every_evaluated_user(pipeline_run, split):
    store = _store(pipeline_run)
    emb = _artifacts(store, "limaml.MetaEmbeddings")[-1]
    model = [m for m in _artifacts(store, "Model") if "LimamlTrainer" in m.uri][-1]
    version = emb.custom_properties["model_version"].string_value
    assert version == str(model.id)
    users = split.users
    found = ParquetEmbeddingStore(emb.uri).lookup(users[F.USER_ID].to_numpy(dtype=object), version).found
    # Users with a history have their own vector; brand-new users (cohort 0) get the cold default.
    np.testing.assert_array_equal(found, users["history_size"].to_numpy() > 0)


def test_second_run_reuses_the_cache(pipeline_run):
    """Rerunning on unchanged data executes nothing new: every component is served from cache."""
    from pipeline.main_job import run_main_job

    store = _store(pipeline_run)
    before = len(store.get_executions())
    run_main_job(pipeline_run.config, pipeline_run.output, pipeline_run.data_dir)
    new = store.get_executions()[before:]
    assert len(new) == len(COMPONENT_IDS)
    assert all(e.last_known_state == metadata_store_pb2.Execution.CACHED for e in new)


def test_corrupt_input_stops_before_training_and_keeps_earlier_artifacts(pipeline_run, tmp_path):
    """A feature missing from the data and a malformed label stop the run at the anomaly gate,
    naming both, and leave the previous run's report and pushed model untouched."""
    from components.anomaly_gate.check import DataAnomaliesError
    from limaml.data.canonical import write_prepared
    from pipeline.main_job import run_main_job

    frame = canonical.read_prepared(pipeline_run.data_dir).drop(columns=[F.GENRES])
    frame.loc[frame.index[:3], F.LABEL] = 7  # not a 0/1 label
    bad_dir = str(tmp_path / "bad-data")
    write_prepared(frame, bad_dir, {"dataset": "synthetic", "corrupted": True})

    report = os.path.join(pipeline_run.paths.report_dir, "index.html")
    with open(report, "rb") as f:
        report_before = f.read()
    pushed_before = sorted(os.listdir(pipeline_run.paths.serving_base))
    store = _store(pipeline_run)
    trainer_runs_before = len(store.get_executions_by_type("tfx.components.trainer.component.Trainer"))

    with pytest.raises(DataAnomaliesError) as err:
        run_main_job(pipeline_run.config, pipeline_run.output, bad_dir)
    message = str(err.value)
    assert f"feature '{F.GENRES}'" in message and f"feature '{F.LABEL}'" in message
    assert "stopping before training" in message

    with open(report, "rb") as f:
        assert f.read() == report_before
    assert sorted(os.listdir(pipeline_run.paths.serving_base)) == pushed_before
    assert len(store.get_executions_by_type("tfx.components.trainer.component.Trainer")) == trainer_runs_before


def test_report_renders_in_a_browser(pipeline_run, tmp_path):
    """The run's index.html renders in headless Chromium with its plots and slice table."""
    import shutil
    import subprocess

    from PIL import Image

    chromium = shutil.which("chromium")
    if not chromium:
        pytest.fail("chromium not installed: run scripts/system_packages.sh as root (the test command does)")
    page = "file://" + os.path.join(pipeline_run.paths.report_dir, "index.html")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    png = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={png}", "--window-size=1280,2000", page], check=True,
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert (pixels < 245).any(axis=2).mean() > 0.05  # not a blank page
    dom = subprocess.run(flags + ["--dump-dom", page], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count("<img") >= 3 and "<table" in dom
    for text in ("limaml", "wide_deep_id", "global_dnn", "linear", "oracle", "Paired lift of LiMAML"):
        assert text in dom


def test_users_without_history_get_the_unadapted_output_of_their_own_meta_features(pipeline_run, split):
    """EmbeddingJoin: a cohort-0 user's embedding is f(x_meta,u; θ_meta), x_meta built here by hand
    from the Transform vocabularies (id = position in the vocabulary file, OOV = its length)."""
    import tensorflow_transform as tft

    from components.meta_embedding_gen.meta_block import transform_graph_dir
    from trainer.export import load_meta_block
    from trainer.model import meta_forward

    store = _store(pipeline_run)
    model_art = [m for m in _artifacts(store, "Model") if "LimamlTrainer" in m.uri][-1]
    folder = os.path.join(model_art.uri, "Format-Serving")
    model, _, _ = load_meta_block(meta_block_dir(folder))
    layout = model.layout
    assert not layout.meta_multi_hot and not layout.meta_numeric and not layout.use_user_id_in_meta
    vocab = tft.TFTransformOutput(transform_graph_dir(folder))
    joined = [a for a in _artifacts(store, "Examples") if "EmbeddingJoin" in a.uri][-1]
    cold_users = set(split.users.loc[split.users["history_size"] == 0, F.USER_ID])
    assert cold_users
    checked = 0
    files = tf.io.gfile.glob(os.path.join(joined.uri, "Split-eval", "*"))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        feats = tf.train.Example.FromString(record).features.feature
        if feats[F.USER_ID].bytes_list.value[0].decode() not in cold_users:
            continue
        parts = []
        for name, size in layout.meta_categorical:
            words = [w.decode() if isinstance(w, bytes) else w for w in vocab.vocabulary_by_name(name)]
            value = feats[name].bytes_list.value[0].decode()
            parts.append(np.eye(size)[words.index(value) if value in words else len(words)])
        if model.user_emb is not None:  # the user's own id row (zero for a user never trained)
            uid = feats[F.USER_ID].bytes_list.value[0]
            bucket = int(tf.strings.to_hash_bucket_fast(uid, layout.user_id_buckets).numpy())
            parts.append(model.user_emb.numpy()[bucket])
        want = meta_forward(model.meta_params, tf.constant(np.concatenate(parts)[None, :], tf.float32),
                            model.model_cfg.activation).numpy()[0]
        got = np.asarray(feats[F.META_EMBEDDING].float_list.value)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked >= len(cold_users)
