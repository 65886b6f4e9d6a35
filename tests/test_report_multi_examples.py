"""The multi-block model is scored on its own example set (2E-wide meta_embedding), and its
scores are matched to the report's rows: same rows in another order, by user, label, cohort,
item and timestamp."""
import numpy as np
import pytest
import tensorflow as tf

from components.report import scoring
from schema import features as F
from tests.test_report_scoring import _Logistic, _save, run_report_executor

ROWS = [  # user, label, cohort, item, timestamp, x
    ("u1", 1, "0", "i1", 10, 0.0),
    ("u1", 0, "0", "i2", 11, 1.0),
    ("u2", 1, "1-4", "i1", 12, -2.0),
    ("u3", 0, "1-4", "i3", 13, 0.5),
    ("u3", 1, "1-4", "i3", 14, 3.0),
]


def _example(user, label, cohort, item, ts, x, width):
    f = tf.train.Feature
    feats = {F.USER_ID: f(bytes_list=tf.train.BytesList(value=[user.encode()])),
             F.LABEL: f(int64_list=tf.train.Int64List(value=[label])),
             F.COHORT: f(bytes_list=tf.train.BytesList(value=[cohort.encode()])),
             F.ITEM_ID: f(bytes_list=tf.train.BytesList(value=[item.encode()])),
             F.TIMESTAMP: f(int64_list=tf.train.Int64List(value=[ts])),
             "x": f(float_list=tf.train.FloatList(value=[x])),
             F.META_EMBEDDING: f(float_list=tf.train.FloatList(value=[0.1] * width))}
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _write(path, rows, width=2):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for row in rows:
            w.write(_example(*row, width))
    return [str(path)]


def test_scores_read_from_a_permuted_copy_are_matched_to_the_rows(tmp_path):
    model = _save(_Logistic(2.0, -1.0, use_embedding=False), str(tmp_path / "m"))
    main = _write(tmp_path / "main.gz", ROWS)
    permuted = _write(tmp_path / "perm.gz", [ROWS[i] for i in (3, 0, 4, 2, 1)])
    rows = scoring.score_examples(main, {"m": model}, key_features=scoring.ROW_KEY_FEATURES)
    other = scoring.score_examples(permuted, {"m": model}, key_features=scoring.ROW_KEY_FEATURES)
    want = 1 / (1 + np.exp(-(2.0 * np.array([r[5] for r in ROWS]) - 1.0)))
    np.testing.assert_allclose(scoring.aligned_scores(rows, other, "m"), want, rtol=1e-6)
    assert not np.allclose(other.scores["m"], want)  # the copy's own order differs


def test_other_rows_are_refused(tmp_path):
    model = _save(_Logistic(2.0, -1.0, use_embedding=False), str(tmp_path / "m"))
    rows = scoring.score_examples(_write(tmp_path / "a.gz", ROWS), {"m": model},
                                  key_features=scoring.ROW_KEY_FEATURES)
    changed = [ROWS[0][:4] + (99,) + ROWS[0][5:], *ROWS[1:]]
    other = scoring.score_examples(_write(tmp_path / "b.gz", changed), {"m": model},
                                   key_features=scoring.ROW_KEY_FEATURES)
    with pytest.raises(ValueError, match="does not hold the report's evaluation rows"):
        scoring.aligned_scores(rows, other, "m")


def test_report_executor_passes_the_multi_examples(tmp_path, monkeypatch):
    seen = run_report_executor(tmp_path, monkeypatch, {
        "limaml_multi_model": ("Model", "multi"),
        "limaml_multi_examples": ("Examples", "multi_examples")})
    assert seen["model_examples"] == {"limaml_multi": str(tmp_path / "multi_examples" / "Split-eval" / "*")}
