"""components/report/scoring.py: per-row predictions of served SavedModels on tf.Example TFRecords,
checked against a tiny hand-built model whose output is worked out by hand."""
import math

import numpy as np
import pytest
import tensorflow as tf

from components.report import scoring
from schema import features as F


class _Logistic(tf.Module):
    """p = sigmoid(w * x + b [+ sum(meta_embedding)]): the serving contract on serialized tf.Examples."""

    def __init__(self, w: float, b: float, use_embedding: bool):
        super().__init__()
        self.w = tf.Variable(w, dtype=tf.float32)
        self.b = tf.Variable(b, dtype=tf.float32)
        self.use_embedding = use_embedding

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        spec = {"x": tf.io.FixedLenFeature([], tf.float32),
                F.META_EMBEDDING: tf.io.FixedLenFeature([2], tf.float32, default_value=[0.0, 0.0])}
        parsed = tf.io.parse_example(examples, spec)
        logit = self.w * parsed["x"] + self.b
        if self.use_embedding:
            logit += tf.reduce_sum(parsed[F.META_EMBEDDING], axis=1)
        return {"probabilities": tf.sigmoid(logit)}


def _save(module, path):
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve.get_concrete_function()})
    return path


def _example(user, label, cohort, x, emb):
    feats = {
        F.USER_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[user.encode()])),
        F.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        F.COHORT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[cohort.encode()])),
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[x])),
        F.META_EMBEDDING: tf.train.Feature(float_list=tf.train.FloatList(value=emb)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


ROWS = [  # user, label, cohort, x, meta embedding
    ("u1", 1, "0", 0.0, [0.0, 0.0]),
    ("u1", 0, "0", 1.0, [0.5, 0.5]),
    ("u2", 1, "1-4", -2.0, [1.0, -3.0]),
    ("u3", 0, "1-4", 0.5, [0.25, 0.25]),
    ("u3", 1, "1-4", 3.0, [0.0, 2.0]),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    models = {"a": _save(_Logistic(2.0, -1.0, use_embedding=True), str(root / "a")),
              "b": _save(_Logistic(-1.0, 0.5, use_embedding=False), str(root / "b"))}
    files = []
    for i, chunk in enumerate((ROWS[:3], ROWS[3:])):  # two gzipped files, read in name order
        path = str(root / f"data-{i}.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as w:
            for row in chunk:
                w.write(_example(*row))
        files.append(path)
    return models, files


def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


@pytest.mark.parametrize("batch_size", [1, 2, 4096])
def test_scores_match_the_hand_computed_probabilities(setup, batch_size):
    models, files = setup
    rows = scoring.score_examples(files, models, batch_size=batch_size)
    assert len(rows) == len(ROWS)
    assert rows.user_ids.tolist() == [r[0] for r in ROWS]
    assert rows.labels.tolist() == [r[1] for r in ROWS] and rows.labels.dtype == np.int64
    assert rows.cohorts.tolist() == [r[2] for r in ROWS]
    want_a = [_sigmoid(2.0 * x - 1.0 + sum(e)) for _, _, _, x, e in ROWS]
    want_b = [_sigmoid(-1.0 * x + 0.5) for _, _, _, x, _ in ROWS]
    np.testing.assert_allclose(rows.scores["a"], want_a, rtol=1e-6)
    np.testing.assert_allclose(rows.scores["b"], want_b, rtol=1e-6)
    # Row 0 of model a by hand: sigmoid(2*0 - 1 + 0) = 1 / (1 + e).
    assert rows.scores["a"][0] == pytest.approx(1.0 / (1.0 + math.e), rel=1e-6)


def test_users_per_cohort_and_frame(setup):
    models, files = setup
    rows = scoring.score_examples(files, {"b": models["b"]})
    assert rows.users_per_cohort(["0", "1-4", "5-19"]) == {"overall": 3, "0": 1, "1-4": 2, "5-19": 0}
    frame = rows.to_frame()
    assert list(frame.columns) == [F.USER_ID, F.LABEL, F.COHORT, "b"]
    assert len(frame) == len(ROWS)
    with pytest.raises(ValueError, match="outside"):
        rows.users_per_cohort(["0"])


def test_stored_predictions_are_read_as_scores(setup, tmp_path):
    """A prediction the examples carry (the synthetic oracle's ``oracle_prob``) becomes a score
    column beside the served models', row for row."""
    models, _ = setup
    path = str(tmp_path / "stored.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for user, label, x in (("u1", 1, 0.25), ("u2", 0, 0.75), ("u2", 1, 0.5)):
            w.write(_example(user, label, "0", x, [0.0, 0.0]))
    rows = scoring.score_examples([path], {"b": models["b"]}, stored_predictions={"stored": "x"})
    np.testing.assert_allclose(rows.scores["stored"], [0.25, 0.75, 0.5], rtol=1e-7)
    np.testing.assert_allclose(rows.scores["b"], [_sigmoid(-x + 0.5) for x in (0.25, 0.75, 0.5)], rtol=1e-6)
    with pytest.raises(ValueError, match="names of served models"):
        scoring.score_examples([path], {"b": models["b"]}, stored_predictions={"b": "x"})
    with pytest.raises(ValueError, match="no feature 'nope'"):
        scoring.score_examples([path], {"b": models["b"]}, stored_predictions={"s": "nope"})


def test_stored_predictions_outside_0_1_are_refused(setup):
    models, files = setup  # x holds -2 and 3
    with pytest.raises(ValueError, match="'stored' returned predictions outside"):
        scoring.score_examples(files, {"b": models["b"]}, stored_predictions={"stored": "x"})


def test_errors_name_the_problem(setup, tmp_path):
    models, files = setup
    with pytest.raises(FileNotFoundError):
        scoring.score_examples(files, {"missing": str(tmp_path / "nothing")})
    with pytest.raises(FileNotFoundError):
        scoring.example_files(str(tmp_path / "none-*"))
    with pytest.raises(ValueError, match="no feature 'nope'"):
        scoring.score_examples(files, models, cohort_key="nope")
    with pytest.raises(ValueError, match="output"):
        scoring.score_examples(files, models, prediction_key="logits")
    with pytest.raises(ValueError, match="batch_size"):
        scoring.score_examples(files, models, batch_size=0)


def run_report_executor(tmp_path, monkeypatch, extra=()) -> dict:
    """Runs the Report executor on empty artifacts (plus ``extra``: input name -> (artifact
    type, folder)) with the writer replaced by a recorder; returns what the writer was given:
    ``{"args": positional, **keywords}``."""
    from tfx.types import standard_artifacts

    from components.artifacts.types import Report
    from components.report import executor
    from limaml.config import LimamlConfig

    def artifact(kind, name):
        a = kind()
        a.uri = str(tmp_path / name)
        return [a]

    inputs = {"examples": artifact(standard_artifacts.Examples, "examples"),
              **{k: artifact(standard_artifacts.ModelEvaluation, k)
                 for k in ("evaluation", "baseline_evaluation", "linear_evaluation")},
              **{k: artifact(standard_artifacts.Model, k) for k in executor.MODEL_INPUTS},
              **{k: artifact(getattr(standard_artifacts, kind), folder)
                 for k, (kind, folder) in dict(extra).items()}}
    seen: dict = {}
    monkeypatch.setattr(executor.writer, "write_run_report",
                        lambda *args, **kwargs: seen.update(args=args, **kwargs))
    executor.Executor().Do(inputs, {"report": artifact(Report, "report")},
                           {"limaml_config": LimamlConfig().to_json()})
    return seen


@pytest.mark.parametrize("with_multi", [False, True])
def test_report_executor_scores_limaml_multi_only_when_wired(tmp_path, monkeypatch, with_multi):
    """The Report executor hands the optional limaml_multi model to the writer when it is wired."""
    extra = {"limaml_multi_model": ("Model", "multi")} if with_multi else {}
    model_dirs = run_report_executor(tmp_path, monkeypatch, extra)["args"][4]
    want = {"limaml", "global_dnn", "wide_deep_id", "linear", "linear_user_id"} | (
        {"limaml_multi"} if with_multi else set())
    assert set(model_dirs) == want
    if with_multi:
        assert model_dirs["limaml_multi"] == str(tmp_path / "multi" / "Format-Serving")
