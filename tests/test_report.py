"""Tests of ``report/``: TFMA configs, metrics.json from real TFMA output, the HTML report.

A module fixture writes tf.Examples with a label, a cohort, a user id and the predictions of six
"models" of planted quality (oracle = the true click probability; limaml, wide_deep_id and
global_dnn = noisier and noisier versions of the true logit; linear beats global_dnn, so
global_dnn is flagged under-trained, while linear_user_id does not beat wide_deep_id), then runs
TFMA model-agnostically four times, the way the pipeline does: A = limaml as ``candidate`` vs
wide_deep_id as ``baseline``, B = global_dnn alone, C = the oracle from ``oracle_prob``, D =
linear as ``candidate`` vs linear_user_id as ``baseline``. The cohort ``100+`` holds one class
only.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import subprocess
from typing import Dict, List

import numpy as np
import pandas as pd
import pytest

from report import eval_config as ec
from report import metrics as rm

# TFMA's AUC on the one-class cohort divides 0 by 0 inside TFMA.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")

COHORTS = rm.DEFAULT_COHORTS
PRESENT_COHORTS = ("0", "1-4", "5-19", "20-99")
ONE_CLASS_COHORT = "100+"  # 2 users, 4 examples, all labels 0: AUC undefined
# An extra cohort name with no example at all (build_metrics takes the cohort list).
EMPTY_COHORT = "1000+"
# Users and examples per user, per cohort.
LAYOUT = {"0": (60, 6), "1-4": (50, 8), "5-19": (40, 10), "20-99": (30, 14), "100+": (2, 2)}
PRED_COLUMNS = {"limaml": "p_limaml", "wide_deep_id": "p_wide_deep_id", "global_dnn": "p_global_dnn",
                "linear": "p_linear", "linear_user_id": "p_linear_user_id", "oracle": "oracle_prob"}
# The tests use 1000 AUC thresholds (10000, the production default, makes TFMA's jackknife
# several times slower); TFMA's interpolated AUC then matches the exact one to ~1e-3.
NUM_THRESHOLDS = 1000
AUC_TOL = 2e-3


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def make_frame(seed: int = 7) -> pd.DataFrame:
    """Evaluation examples with planted per-model quality (oracle > limaml > wide&deep > dnn)."""
    rng = np.random.default_rng(seed)
    rows = []
    for cohort, (n_users, per_user) in LAYOUT.items():
        for u in range(n_users):
            user = f"{cohort}-u{u}"
            bias = rng.normal(-0.6, 1.0)
            for _ in range(per_user):
                rows.append((user, cohort, bias + rng.normal(0.0, 1.0)))
    df = pd.DataFrame(rows, columns=["user_id", "cohort", "logit"])
    n = len(df)
    z = df["logit"].to_numpy()
    df["oracle_prob"] = _sigmoid(z)
    df["label"] = (rng.random(n) < df["oracle_prob"]).astype(np.int64)
    df.loc[df["cohort"] == ONE_CLASS_COHORT, "label"] = 0
    df["p_limaml"] = _sigmoid(z + rng.normal(0.0, 0.6, n))
    df["p_wide_deep_id"] = _sigmoid(0.8 * z + rng.normal(0.0, 1.2, n))
    df["p_global_dnn"] = _sigmoid(0.6 * z + rng.normal(0.0, 1.8, n) - 0.3)
    # linear references (drawn last: the columns above keep their values)
    df["p_linear"] = _sigmoid(0.7 * z + rng.normal(0.0, 1.4, n))            # beats global_dnn
    df["p_linear_user_id"] = _sigmoid(0.6 * z + rng.normal(0.0, 1.6, n))    # below wide_deep_id
    return df


def write_examples(df: pd.DataFrame, path: str) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for row in df.itertuples(index=False):
            feature = {
                "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row.user_id.encode()])),
                "cohort": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row.cohort.encode()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(row.label)])),
            }
            for column in PRED_COLUMNS.values():
                feature[column] = tf.train.Feature(float_list=tf.train.FloatList(value=[getattr(row, column)]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


@dataclasses.dataclass
class Evaluation:
    df: pd.DataFrame
    data_path: str
    dirs: Dict[str, str]
    sources: List[rm.ModelSource]
    users: Dict[str, int]


# Model-agnostic TFMA (no model loaded) treats the run as baseline-less when it applies its
# defaults and refuses change thresholds then; the test runs keep the value threshold only.
MODEL_AGNOSTIC_THRESHOLDS = ec.BlessingThresholds(min_auc=0.55, min_auc_change=None)


def _evaluate(root: str, thresholds: ec.BlessingThresholds = MODEL_AGNOSTIC_THRESHOLDS) -> Evaluation:
    import tensorflow_model_analysis as tfma

    from report.writer import run_oracle_evaluation

    os.makedirs(root, exist_ok=True)
    df = make_frame()
    data_path = os.path.join(root, "eval.tfrecord")
    write_examples(df, data_path)
    configs = {
        "A": ec.make_eval_config(with_baseline=True, thresholds=thresholds, prediction_key="p_limaml",
                                 baseline_prediction_key="p_wide_deep_id", auc_num_thresholds=NUM_THRESHOLDS,
                                 confidence_intervals=True),
        "B": ec.make_eval_config(with_baseline=False, thresholds=thresholds, prediction_key="p_global_dnn",
                                 auc_num_thresholds=NUM_THRESHOLDS, confidence_intervals=True),
        "D": ec.make_eval_config(with_baseline=True, thresholds=thresholds, prediction_key="p_linear",
                                 baseline_prediction_key="p_linear_user_id", auc_num_thresholds=NUM_THRESHOLDS,
                                 confidence_intervals=True),
    }
    dirs = {"C": os.path.join(root, "eval_C")}
    oracle = run_oracle_evaluation(data_path, dirs["C"], auc_num_thresholds=NUM_THRESHOLDS,
                                   confidence_intervals=True)
    for run, config in configs.items():
        dirs[run] = os.path.join(root, f"eval_{run}")
        tfma.run_model_analysis(eval_config=config, data_location=data_path, output_path=dirs[run])
    sources = [rm.ModelSource("limaml", dirs["A"], "candidate"),
               rm.ModelSource("wide_deep_id", dirs["A"], "baseline"),
               rm.ModelSource("global_dnn", dirs["B"], ""),
               rm.ModelSource("linear", dirs["D"], "candidate"),
               rm.ModelSource("linear_user_id", dirs["D"], "baseline"),
               oracle]
    users = {"overall": int(df["user_id"].nunique()),
             **{c: int(df.loc[df["cohort"] == c, "user_id"].nunique()) for c in COHORTS}}
    return Evaluation(df, data_path, dirs, sources, users)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> Evaluation:
    return _evaluate(str(tmp_path_factory.mktemp("tfma")))


@pytest.fixture(scope="module")
def metrics(evaluation) -> dict:
    return rm.build_metrics("synthetic", "cutoff", evaluation.sources, evaluation.users)


@pytest.fixture(scope="module")
def comparisons(evaluation) -> dict:
    from report.paired import paired_bootstrap

    df = evaluation.df
    scores = {model: df[column].to_numpy() for model, column in PRED_COLUMNS.items()}
    return paired_bootstrap(df["user_id"].to_numpy(), df["label"].to_numpy(), scores, df["cohort"].to_numpy(),
                            n_resamples=300, seed=0)


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# ---------------------------------------------------------------------------------------------
# eval_config


def test_eval_config_with_baseline_names_and_thresholds():
    config = ec.make_eval_config(with_baseline=True,
                                 thresholds=ec.BlessingThresholds(min_auc=0.6, min_auc_change=0.01))
    assert [(s.name, s.is_baseline, s.label_key) for s in config.model_specs] == [
        ("candidate", False, "label"), ("baseline", True, "label")]
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], ["cohort"]]
    assert not config.options.compute_confidence_intervals.value  # off by default (cost)
    assert ec.make_eval_config(confidence_intervals=True).options.compute_confidence_intervals.value
    assert not ec.make_oracle_eval_config().options.compute_confidence_intervals.value
    metrics = {m.class_name: m for m in config.metrics_specs[0].metrics}
    assert {"AUC", "LogLoss", "ExampleCount", "CalibrationPlot"} <= set(metrics)
    assert metrics["LogLoss"].module == "report.tfma_metrics"
    assert not metrics["AUC"].HasField("threshold")  # would gate every cohort slice too
    [per_slice] = metrics["AUC"].per_slice_thresholds
    assert [list(spec.feature_keys) for spec in per_slice.slicing_specs] == [[]]  # overall only
    threshold = per_slice.threshold
    assert threshold.value_threshold.lower_bound.value == pytest.approx(0.6)
    assert threshold.change_threshold.absolute.value == pytest.approx(0.01)
    assert json.loads(metrics["AUC"].config) == {"name": "auc", "num_thresholds": 10000}


def test_eval_config_without_baseline_has_no_change_threshold():
    config = ec.make_eval_config(with_baseline=False)
    assert [(s.name, s.is_baseline) for s in config.model_specs] == [("", False)]
    auc = next(m for m in config.metrics_specs[0].metrics if m.class_name == "AUC")
    assert auc.per_slice_thresholds[0].threshold.HasField("value_threshold")
    assert not auc.per_slice_thresholds[0].threshold.HasField("change_threshold")
    no_thresholds = ec.make_eval_config(with_baseline=True, thresholds=None)
    auc = next(m for m in no_thresholds.metrics_specs[0].metrics if m.class_name == "AUC")
    assert not auc.HasField("threshold") and not auc.per_slice_thresholds


def test_eval_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ci_method"):
        ec.make_eval_config(ci_method="magic")
    with pytest.raises(ValueError, match="min_auc"):
        ec.BlessingThresholds(min_auc=1.5)
    with pytest.raises(ValueError, match="cohort_key"):
        ec.make_eval_config(cohort_key="")
    oracle = ec.make_oracle_eval_config()
    assert [(s.name, s.prediction_key) for s in oracle.model_specs] == [("", "oracle_prob")]


# ---------------------------------------------------------------------------------------------
# metrics.json from real TFMA output


def test_tfma_model_names_as_expected(evaluation):
    tables = {run: rm.load_slice_metrics(d) for run, d in evaluation.dirs.items()}
    assert sorted({m for m, _ in tables["A"]["overall"]}) == ["baseline", "candidate"]
    assert sorted({m for m, _ in tables["B"]["overall"]}) == [""]
    assert sorted({m for m, _ in tables["C"]["overall"]}) == [""]
    assert sorted({m for m, _ in tables["D"]["overall"]}) == ["baseline", "candidate"]
    assert set(tables["A"]) == {"overall", *PRESENT_COHORTS, ONE_CLASS_COHORT}


def test_build_metrics_matches_independent_computation(evaluation, metrics):
    from sklearn.metrics import roc_auc_score

    rm.validate_metrics(metrics)
    assert list(metrics["models"]) == ["limaml", "global_dnn", "wide_deep_id", "linear", "linear_user_id", "oracle"]
    df = evaluation.df
    for model, column in PRED_COLUMNS.items():
        m = metrics["models"][model]
        for name, part in [("overall", df)] + [(c, df[df["cohort"] == c]) for c in PRESENT_COHORTS]:
            s = m["overall"] if name == "overall" else m["cohorts"][name]
            y, p = part["label"].to_numpy(), part[column].to_numpy()
            where = f"{model}/{name}"
            assert s["examples"] == len(part), where
            assert s["users"] == part["user_id"].nunique(), where
            assert s["auc"] == pytest.approx(roc_auc_score(y, p), abs=AUC_TOL), where
            assert s["logloss"] == pytest.approx(_logloss(y, p), rel=1e-4), where
            lo, hi = s["auc_ci95"]
            assert lo <= s["auc"] <= hi, where
            assert hi - lo < 0.3, where
        one_class = m["cohorts"][ONE_CLASS_COHORT]
        part = df[df["cohort"] == ONE_CLASS_COHORT]
        assert one_class["auc"] is None and one_class["auc_ci95"] is None
        assert (one_class["examples"], one_class["users"]) == (4, 2)
        assert one_class["logloss"] == pytest.approx(_logloss(part["label"].to_numpy(), part[column].to_numpy()),
                                                     rel=1e-4)


def test_cohort_without_examples_is_null(evaluation):
    cohorts = (*COHORTS, EMPTY_COHORT)
    m = rm.build_metrics("synthetic", "cutoff", evaluation.sources, evaluation.users, cohorts=cohorts)
    rm.validate_metrics(m, cohorts)
    for model in PRED_COLUMNS:
        assert m["models"][model]["cohorts"][EMPTY_COHORT] == {
            "auc": None, "auc_ci95": None, "logloss": None, "examples": 0, "users": 0}


def test_planted_quality_order(metrics):
    auc = {m: metrics["models"][m]["overall"]["auc"] for m in PRED_COLUMNS}
    assert auc["oracle"] > auc["limaml"] > auc["wide_deep_id"] > auc["global_dnn"]
    assert auc["linear"] > auc["global_dnn"] and auc["wide_deep_id"] > auc["linear_user_id"]


def test_baseline_checks_from_tfma(evaluation, metrics):
    from sklearn.metrics import roc_auc_score

    df = evaluation.df
    exact = {m: roc_auc_score(df["label"], df[c]) for m, c in PRED_COLUMNS.items()}
    assert exact["linear"] > exact["global_dnn"] + 0.01  # planted: global_dnn under-trained
    assert exact["wide_deep_id"] > exact["linear_user_id"] + 0.01  # planted: wide&deep fine
    checks = metrics["baseline_checks"]
    assert set(checks) == {"global_dnn", "wide_deep_id"}
    g, w = checks["global_dnn"], checks["wide_deep_id"]
    assert (g["counterpart"], g["under_trained"]) == ("linear", True)
    assert (w["counterpart"], w["under_trained"]) == ("linear_user_id", False)
    assert g["auc"] == pytest.approx(exact["global_dnn"], abs=AUC_TOL)
    assert g["counterpart_auc"] == pytest.approx(exact["linear"], abs=AUC_TOL)
    assert g["delta"] == pytest.approx(exact["global_dnn"] - exact["linear"], abs=2 * AUC_TOL)


def test_comparisons_agree_with_tfma(evaluation, metrics, comparisons):
    """The paired deltas (exact AUC of the predictions) match TFMA's AUC differences (thresholded)."""
    assert list(comparisons) == ["limaml_vs_wide_deep_id", "limaml_vs_global_dnn", "limaml_vs_linear",
                                 "limaml_vs_linear_user_id"]
    m = metrics["models"]
    for key, comparison in comparisons.items():
        other = key.split("_vs_", 1)[1]
        for name in ("overall", *PRESENT_COHORTS):
            c = comparison["overall"] if name == "overall" else comparison["cohorts"][name]
            tfma_delta = (m["limaml"]["overall"]["auc"] - m[other]["overall"]["auc"] if name == "overall"
                          else m["limaml"]["cohorts"][name]["auc"] - m[other]["cohorts"][name]["auc"])
            assert c["delta"] == pytest.approx(tfma_delta, abs=2 * AUC_TOL), (key, name)
            stats = m["limaml"]["overall"] if name == "overall" else m["limaml"]["cohorts"][name]
            assert (c["users"], c["examples"]) == (stats["users"], stats["examples"]), (key, name)
        assert comparison["cohorts"][ONE_CLASS_COHORT]["delta"] is None
    # planted: limaml is far better than global_dnn overall
    assert comparisons["limaml_vs_global_dnn"]["overall"]["ci95"][0] > 0
    with_comparisons = rm.build_metrics("synthetic", "cutoff", evaluation.sources, evaluation.users,
                                        comparisons=comparisons)
    assert with_comparisons == {**metrics, "comparisons": comparisons}
    bad = copy.deepcopy(comparisons)
    bad["limaml_vs_linear"]["overall"]["ci95"] = [0.05, -0.05]
    with pytest.raises(rm.MetricsShapeError, match="comparisons.limaml_vs_linear.overall.ci95: lower bound above"):
        rm.validate_metrics({**metrics, "comparisons": bad})
    with pytest.raises(rm.MetricsShapeError, match="lower bound above"):
        rm.build_metrics("synthetic", "cutoff", evaluation.sources, evaluation.users, comparisons=bad)


def test_metrics_json_round_trip(metrics):
    text = json.dumps(metrics, allow_nan=False)
    rm.validate_metrics(json.loads(text))


def test_users_per_cohort_from_examples(evaluation):
    assert rm.users_per_cohort_from_examples(evaluation.data_path) == evaluation.users


def test_blessing_from_thresholds(evaluation):
    from tensorflow_model_analysis import load_validation_result

    # Overall AUC >= 0.55 holds for limaml (A) and global_dnn (B); the one-class cohort, where
    # TFMA's AUC is 0.0, must not block the blessing (thresholds gate the overall slice only).
    for run in ("A", "B"):
        result = load_validation_result(evaluation.dirs[run])
        assert result.validation_ok, (run, result)
        assert [d.num_matching_slices for d in result.validation_details.slicing_details] == [1]


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d["models"]["limaml"]["cohorts"].pop("1-4"), "models.limaml.cohorts.1-4: missing"),
    (lambda d: d["models"].pop("global_dnn"), "models.global_dnn: missing"),
    (lambda d: d["models"]["wide_deep_id"]["overall"].__setitem__("auc", "0.7"),
     "models.wide_deep_id.overall.auc: expected a float"),
    (lambda d: d["models"]["limaml"]["cohorts"]["0"].__setitem__("examples", 12.0),
     "models.limaml.cohorts.0.examples: expected an int"),
    (lambda d: d["models"]["limaml"]["overall"].__setitem__("users", True),
     "models.limaml.overall.users: expected an int"),
    (lambda d: d["models"]["limaml"]["overall"].__setitem__("auc_ci95", [0.9]),
     "models.limaml.overall.auc_ci95"),
    (lambda d: d["models"]["limaml"]["overall"].__setitem__("auc", math.nan),
     "models.limaml.overall.auc: expected a finite float"),
    (lambda d: d["models"]["limaml"]["cohorts"]["100+"].__setitem__("examples", 0),
     "models.limaml.cohorts.100+.logloss: must be null"),
    (lambda d: d["models"].__setitem__("ensemble", d["models"]["limaml"]), "models.ensemble: unexpected key"),
    (lambda d: d.__setitem__("protocol", 3), "protocol: expected a non-empty string"),
])
def test_validate_metrics_rejects_mutations(metrics, mutate, path):
    bad = copy.deepcopy(metrics)
    mutate(bad)
    with pytest.raises(rm.MetricsShapeError) as err:
        rm.validate_metrics(bad)
    assert path in str(err.value)


def test_build_metrics_errors(evaluation):
    sources = list(evaluation.sources)
    with pytest.raises(ValueError, match="required models"):
        rm.build_metrics("synthetic", "cutoff", sources[:2], evaluation.users)
    wrong = [dataclasses.replace(s, tfma_model_name="limaml") if s.name == "limaml" else s for s in sources]
    with pytest.raises(KeyError, match="no model named 'limaml'"):
        rm.build_metrics("synthetic", "cutoff", wrong, evaluation.users)
    with pytest.raises(ValueError, match="unknown cohorts"):
        rm.build_metrics("synthetic", "cutoff", sources, {**evaluation.users, "7+": 3})
    with pytest.raises(ValueError, match="must be one of"):
        rm.ModelSource("xgboost", "/tmp", "")


def test_read_calibration(evaluation):
    calibration = rm.read_calibration(evaluation.sources)
    assert set(calibration) == set(PRED_COLUMNS)
    df = evaluation.df
    for model, column in PRED_COLUMNS.items():
        buckets = calibration[model]
        assert sum(b["examples"] for b in buckets) == len(df)
        for b in buckets:
            inside = df[(df[column] >= b["lower"]) & (df[column] < b["upper"])]
            assert b["examples"] == len(inside), (model, b)
            assert b["observed_rate"] == pytest.approx(inside["label"].mean(), abs=1e-9)
            assert b["mean_prediction"] == pytest.approx(inside[column].mean(), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# HTML report


@pytest.fixture(scope="module")
def report_dir(evaluation, comparisons, tmp_path_factory) -> str:
    from report.writer import write_report

    out = str(tmp_path_factory.mktemp("report"))
    # users counted from the examples here (test_report_files compares with the hand counts)
    paths = write_report(dataset="synthetic", protocol="cutoff", sources=evaluation.sources,
                         examples_pattern=evaluation.data_path, out_dir=out, comparisons=comparisons,
                         notes_extra=["Planted models: linear beats global_dnn."])
    assert paths["html"] == os.path.join(out, "index.html")
    return out


def test_report_files(report_dir, metrics, comparisons):
    with open(os.path.join(report_dir, "metrics.json")) as f:
        written = json.load(f)
    rm.validate_metrics(written)
    assert written == json.loads(json.dumps({**metrics, "comparisons": comparisons}))
    with open(os.path.join(report_dir, "index.html")) as f:
        html = f.read()
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") >= 4
    for text in ("limaml", "global_dnn", "wide_deep_id", "oracle", "100+", "n.s.", "gap to oracle",
                 "delete-d jackknife over 20 random partitions", "linear_user_id", "limaml_vs_linear_user_id",
                 "Planted models: linear beats global_dnn.", "LiMAML better", 'id="plot-paired-lift"'):
        assert text in html, text
    g = metrics["models"]["global_dnn"]["overall"]["auc"]
    lin = metrics["models"]["linear"]["overall"]["auc"]
    assert (f"global_dnn does not beat its linear counterpart linear: {g:.3f} vs {lin:.3f} AUC; "
            "treat it as under-trained") in html
    assert "wide_deep_id does not beat" not in html


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium not installed: run scripts/system_packages.sh as root (the test command does)")
    return path


def _chromium_args(tmp_path, *extra: str) -> List[str]:
    return [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", *extra]


def test_html_renders_in_browser(report_dir, tmp_path):
    from PIL import Image

    url = "file://" + os.path.join(report_dir, "index.html")
    png = tmp_path / "report.png"
    subprocess.run(_chromium_args(tmp_path, f"--screenshot={png}", "--window-size=1280,2000", url),
                   check=True, timeout=120, capture_output=True)
    assert png.exists() and png.stat().st_size > 20_000
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[:2] == (2000, 1280)
    non_white = (image.min(axis=2) < 240).mean()
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert non_white > 0.05, non_white
    assert colours > 200, colours

    dom = subprocess.run(_chromium_args(tmp_path, "--dump-dom", url), check=True, timeout=120,
                         capture_output=True, text=True).stdout
    assert dom.count('<img') >= 4
    for plot_id in ("plot-auc", "plot-paired-lift", "plot-lift", "plot-calibration", "plot-oracle-gap"):
        assert f'id="{plot_id}"' in dom, plot_id
    assert '<table id="slice-table"' in dom and 'id="baseline-warning"' in dom
    # one row per model x slice (6 models x (overall + 5 cohorts))
    table = dom.split('<table id="slice-table"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr") == 1 + 6 * 6
    # one row per comparison x slice (4 comparisons: the oracle is no competitor)
    paired = dom.split('<table id="paired-table"', 1)[1].split("</table>", 1)[0]
    assert paired.count("<tr") == 1 + 4 * 6


def test_log_loss_combiner_merges_each_accumulator_once():
    """TFMA 0.47.1's BinaryCrossEntropy counts the first accumulator twice; ours must not."""
    from report import tfma_metrics as tm

    computation = tm.LogLoss().computations(model_names=[""])[0]
    combiner = computation.combiner
    parts = []
    for loss, weight in [(1.0, 1.0), (3.0, 1.0), (2.0, 2.0)]:
        acc = combiner.create_accumulator()
        acc.total_loss, acc.total_weight = loss, weight
        parts.append(acc)
    merged = combiner.merge_accumulators(parts)
    assert (merged.total_loss, merged.total_weight) == (6.0, 4.0)
    assert combiner.extract_output(merged)[computation.keys[0]] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="epsilon"):
        tm.LogLoss(epsilon=0.7)


def test_render_report_without_oracle(metrics, evaluation, tmp_path):
    from report.html import make_slice_table_rows, render_report

    no_oracle = copy.deepcopy(metrics)
    del no_oracle["models"]["oracle"]
    calibration = rm.read_calibration([s for s in evaluation.sources if s.name != "oracle"])
    path = render_report(no_oracle, calibration, None, str(tmp_path))
    with open(path) as f:
        html = f.read()
    assert 'id="plot-auc"' in html and 'id="plot-lift"' in html and 'id="plot-calibration"' in html
    assert 'id="plot-oracle-gap"' not in html and "gap to oracle" not in html
    rows = make_slice_table_rows(no_oracle)
    assert len(rows) == 5 * 6 and rows[0]["model"] == "limaml" and rows[0]["slice"] == "overall"
    with pytest.raises(ValueError, match="lacks"):
        render_report(no_oracle, calibration, [{"model": "limaml"}], str(tmp_path))
    with pytest.raises(rm.MetricsShapeError):
        render_report({"dataset": "x"}, calibration, None, str(tmp_path))


@pytest.mark.parametrize("thresholds, candidate, baseline, blessed", [
    (ec.BlessingThresholds(), 0.79, 0.70, True),                        # default: no regression
    (ec.BlessingThresholds(), 0.69, 0.70, False),                       # regression vs baseline
    (ec.BlessingThresholds(min_auc=0.8), 0.79, 0.70, False),            # below the absolute bound
    (ec.BlessingThresholds(min_auc_change=-0.02), 0.69, 0.70, True),    # tolerated regression
    (ec.BlessingThresholds(min_auc_change=None, min_relative_auc_change=0.05), 0.79, 0.70, True),
    (ec.BlessingThresholds(min_auc_change=None, min_relative_auc_change=0.2), 0.79, 0.70, False),
])
def test_blessing_thresholds_with_baseline(thresholds, candidate, baseline, blessed):
    """TFMA's validator (what TFX's Evaluator runs) applied to our config with a baseline."""
    from tensorflow_model_analysis.evaluators import metrics_validator
    from tensorflow_model_analysis.metrics.metric_types import MetricKey
    from tensorflow_model_analysis.utils import config_util

    config = config_util.update_eval_config_with_defaults(
        ec.make_eval_config(with_baseline=True, thresholds=thresholds), has_baseline=True)
    values = {MetricKey("auc", model_name="candidate"): candidate,
              MetricKey("auc", model_name="baseline"): baseline,
              MetricKey("auc", model_name="candidate", is_diff=True): candidate - baseline}
    assert metrics_validator.validate_metrics(((), values), config).validation_ok is blessed
    # cohort slices are reported, never gated
    assert metrics_validator.validate_metrics(((("cohort", "1-4"),), values), config).validation_ok


def test_scored_report_with_limaml_multi(evaluation, metrics, tmp_path):
    """A run whose scored models include limaml_multi (no TFMA run for it): its entry comes from
    its per-row scores, limaml_multi_vs_limaml is in metrics.json and the page shows both."""
    from sklearn.metrics import roc_auc_score

    from components.report.scoring import ScoredRows
    from report.writer import write_scored_report

    df = evaluation.df
    scores = {m: df[c].to_numpy() for m, c in PRED_COLUMNS.items() if m != "oracle"}
    planted = (df["cohort"] == "20-99").to_numpy()
    multi = scores["limaml"].copy()
    multi[planted] = df["oracle_prob"].to_numpy()[planted]  # better there by construction
    scores["limaml_multi"] = multi
    rows = ScoredRows(user_ids=df["user_id"].to_numpy(object), labels=df["label"].to_numpy(),
                      cohorts=df["cohort"].to_numpy(object), scores=scores)
    paths = write_scored_report("synthetic", "cutoff", evaluation.sources, rows, str(tmp_path), COHORTS,
                                seed=0, n_resamples=300)
    with open(paths["metrics_json"]) as f:
        saved = json.load(f)
    rm.validate_metrics(saved)
    assert list(saved["models"])[:2] == ["limaml", "limaml_multi"]
    assert saved["models"]["oracle"] == metrics["models"]["oracle"]  # not scored: TFMA's entry
    for model in ("limaml", "global_dnn"):  # scored: TFMA's values, the bootstrap's intervals
        for name, s in [("overall", saved["models"][model]["overall"]),
                        *saved["models"][model]["cohorts"].items()]:
            tfma_s = (metrics["models"][model]["overall"] if name == "overall"
                      else metrics["models"][model]["cohorts"][name])
            assert {k: v for k, v in s.items() if k != "auc_ci95"} == \
                {k: v for k, v in tfma_s.items() if k != "auc_ci95"}
            assert (s["auc_ci95"] is None) == (s["auc"] is None)
    y = df["label"].to_numpy()
    for cohort in PRESENT_COHORTS:
        mask = (df["cohort"] == cohort).to_numpy()
        entry = saved["models"]["limaml_multi"]["cohorts"][cohort]
        assert entry["auc"] == pytest.approx(roc_auc_score(y[mask], multi[mask]), abs=1e-12)
        assert entry["examples"] == int(mask.sum())
    assert saved["models"]["limaml_multi"]["cohorts"][ONE_CLASS_COHORT]["auc"] is None
    assert "limaml_vs_limaml_multi" not in saved["comparisons"]
    assert set(saved["comparisons"]) >= {"limaml_vs_global_dnn", "limaml_multi_vs_limaml"}
    diff = saved["comparisons"]["limaml_multi_vs_limaml"]["cohorts"]
    assert diff["20-99"]["ci95"][0] > 0
    assert all(diff[c]["delta"] == 0.0 for c in ("0", "1-4", "5-19"))
    with open(paths["html"]) as f:
        page = f.read()
    assert 'id="plot-multi-paired"' in page and 'id="multi-paired-table"' in page
    assert "limaml_multi: no TFMA run" in page
    assert "bootstrap resamples of users (a drawn user brings all of its rows)" in page
    slice_table = page.split('<table id="slice-table"', 1)[1].split("</table>", 1)[0]
    assert slice_table.count("<code>limaml_multi</code>") == 6


def _user_bootstrap_sd(users, y, p, n, seed):
    """An independent cluster bootstrap (users drawn with replacement) of the AUC's spread."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    names = np.unique(users)
    rows_of = {u: np.flatnonzero(users == u) for u in names}
    aucs = []
    for _ in range(n):
        idx = np.concatenate([rows_of[u] for u in rng.choice(names, size=len(names))])
        if 0 < y[idx].sum() < len(idx):
            aucs.append(roc_auc_score(y[idx], p[idx]))
    return float(np.std(aucs))


def test_scored_report_intervals_resample_users_not_rows(evaluation, tmp_path):
    """The TFMA-read models' intervals come from a bootstrap over users: repeating every row of
    every user four times leaves them unchanged (a row bootstrap would halve them), and their
    width matches an independent cluster bootstrap's ±1.96 sd."""
    from components.report.scoring import ScoredRows
    from report.writer import write_scored_report

    df = evaluation.df
    scores = {m: df[c].to_numpy() for m, c in PRED_COLUMNS.items()}  # oracle scored too

    def report(frame, folder):
        rows = ScoredRows(user_ids=frame["user_id"].to_numpy(object), labels=frame["label"].to_numpy(),
                          cohorts=frame["cohort"].to_numpy(object),
                          scores={m: frame[c].to_numpy() for m, c in PRED_COLUMNS.items()})
        paths = write_scored_report("synthetic", "cutoff", evaluation.sources, rows, str(tmp_path / folder),
                                    COHORTS, seed=3, n_resamples=400)
        with open(paths["metrics_json"]) as f:
            return json.load(f)

    once = report(df, "once")
    four = report(pd.concat([df] * 4, ignore_index=True), "four")
    users, y = df["user_id"].to_numpy(object), df["label"].to_numpy()
    for model in PRED_COLUMNS:
        lo, hi = once["models"][model]["overall"]["auc_ci95"]
        assert four["models"][model]["overall"]["auc_ci95"] == pytest.approx([lo, hi], abs=1e-12)
        assert lo <= once["models"][model]["overall"]["auc"] <= hi
        sd = _user_bootstrap_sd(users, y, scores[model], 400, seed=11)
        assert (hi - lo) == pytest.approx(2 * 1.96 * sd, rel=0.25), model
        for cohort in PRESENT_COHORTS:
            assert (four["models"][model]["cohorts"][cohort]["auc_ci95"]
                    == pytest.approx(once["models"][model]["cohorts"][cohort]["auc_ci95"], abs=1e-12))
        assert once["models"][model]["cohorts"][ONE_CLASS_COHORT]["auc_ci95"] is None
