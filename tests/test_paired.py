"""Tests of ``report/paired.py`` (paired cluster bootstrap, weighted AUC, baseline checks) and of
the new ``metrics.json`` keys and report elements, on hand-built data (no TFMA run here).

Expected numbers come from independent computations: sklearn's ``roc_auc_score``, pairs counted
by hand, and slow reference bootstraps written as plain loops in this file.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Tuple

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from report import metrics as rm
from report import paired as rp

COHORTS = rm.DEFAULT_COHORTS  # ("0", "1-4", "5-19", "20-99", "100+")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# ---------------------------------------------------------------------------------------------
# weighted_auc


def test_weighted_auc_by_hand():
    # positives 0.8 (w 2), 0.5 (w 1); negatives 0.5 (w 1), 0.2 (w 3).
    # pairs: 0.8>0.5: 2*1; 0.8>0.2: 2*3; 0.5=0.5: 1*1*1/2; 0.5>0.2: 1*3  -> 11.5 / ((2+1)*(1+3))
    y = np.array([1, 1, 0, 0])
    s = np.array([0.8, 0.5, 0.5, 0.2])
    assert float(rp.weighted_auc(y, s, [2, 1, 1, 3])) == pytest.approx(11.5 / 12, abs=1e-15)
    assert float(rp.weighted_auc(y, s, np.ones(4))) == pytest.approx(3.5 / 4, abs=1e-15)
    # weights as a matrix: one row per weighting; a row without positive weight is undefined
    got = rp.weighted_auc(y, s, [[2, 1, 1, 3], [1, 1, 1, 1], [0, 0, 1, 1]])
    assert got.shape == (3,)
    assert got[0] == pytest.approx(11.5 / 12) and got[1] == pytest.approx(3.5 / 4) and math.isnan(got[2])


def test_weighted_auc_matches_sklearn_with_ties_and_random_weights():
    rng = np.random.default_rng(11)
    for trial in range(6):
        n = 400
        y = rng.integers(0, 2, n)
        s = np.round(rng.random(n) + 0.3 * y, 1)  # ~14 distinct values: many ties across classes
        w_float = rng.gamma(0.7, size=n)
        w_float[rng.random(n) < 0.1] = 0.0
        assert float(rp.weighted_auc(y, s, w_float)) == pytest.approx(
            roc_auc_score(y, s, sample_weight=w_float), abs=1e-12), trial
        w_int = rng.integers(0, 4, size=(25, n))
        got = rp.weighted_auc(y, s, w_int)
        want = [roc_auc_score(y, s, sample_weight=w) for w in w_int]
        np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)
        assert float(rp.weighted_auc(y, s, np.ones(n))) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_weighted_auc_rejects_bad_inputs():
    y, s = np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="non-negative"):
        rp.weighted_auc(y, s, [1, -1, 1])
    with pytest.raises(ValueError, match="0/1"):
        rp.weighted_auc([0, 2, 1], s, [1, 1, 1])
    with pytest.raises(ValueError, match="non-finite"):
        rp.weighted_auc(y, [0.1, math.nan, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="shape"):
        rp.weighted_auc(y, s, [1, 1])


# ---------------------------------------------------------------------------------------------
# paired_bootstrap


def make_rows(n_users: int, rows_per_user: int, seed: int,
              cohorts: Tuple[str, ...] = ("0", "1-4", "5-19", "20-99")) -> Dict[str, np.ndarray]:
    """Users with a random bias; labels drawn from the true probability; cohort by user."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), rows_per_user)
    logit = rng.normal(-0.3, 1.0, n_users)[users] + rng.normal(0.0, 1.0, len(users))
    p = _sigmoid(logit)
    y = (rng.random(len(users)) < p).astype(np.int64)
    cohort = np.array(cohorts)[users % len(cohorts)]
    return {"users": users.astype(str), "labels": y, "p": p, "cohorts": cohort, "rng": rng}


def test_planted_difference_is_detected():
    d = make_rows(200, 5, seed=1)
    rng, n = d["rng"], len(d["labels"])
    good = d["p"] + rng.normal(0.0, 0.02, n)   # true probability + small noise
    noise = rng.random(n)                      # pure noise
    out = rp.paired_bootstrap(d["users"], d["labels"], {"limaml": good, "global_dnn": noise}, d["cohorts"],
                              n_resamples=1000, seed=3)
    assert list(out) == ["limaml_vs_global_dnn"]
    overall = out["limaml_vs_global_dnn"]["overall"]
    expected = roc_auc_score(d["labels"], good) - roc_auc_score(d["labels"], noise)
    assert expected > 0.15  # the planted difference
    assert overall["delta"] == pytest.approx(expected, abs=1e-12)
    lo, hi = overall["ci95"]
    assert 0 < lo < overall["delta"] < hi
    assert overall["p_value"] < 0.01
    assert (overall["users"], overall["examples"], overall["resamples"]) == (200, 1000, 1000)
    for cohort in ("0", "1-4", "5-19", "20-99"):
        c = out["limaml_vs_global_dnn"]["cohorts"][cohort]
        mask = d["cohorts"] == cohort
        assert c["delta"] == pytest.approx(roc_auc_score(d["labels"][mask], good[mask])
                                           - roc_auc_score(d["labels"][mask], noise[mask]), abs=1e-12)
        assert c["ci95"][0] > 0, cohort
        assert (c["users"], c["examples"]) == (50, 250)


def test_identical_scorers_give_zero():
    d = make_rows(100, 4, seed=2)
    s = d["p"] + d["rng"].normal(0.0, 0.3, len(d["p"]))
    out = rp.paired_bootstrap(d["users"], d["labels"], {"limaml": s, "wide_deep_id": s.copy()}, d["cohorts"],
                              n_resamples=300)
    c = out["limaml_vs_wide_deep_id"]["overall"]
    assert c["delta"] == 0.0
    assert c["ci95"] == [0.0, 0.0]
    assert c["p_value"] == 1.0


def test_noise_vs_noise_intervals_cover_zero():
    """Two independent noise scorers: equal AUC in truth, so the 95% interval should contain 0."""
    covered = 0
    for seed in range(20):
        d = make_rows(150, 4, seed=100 + seed)
        rng, n = d["rng"], len(d["labels"])
        out = rp.paired_bootstrap(d["users"], d["labels"], {"limaml": rng.random(n), "linear": rng.random(n)},
                                  d["cohorts"], n_resamples=400, seed=seed)
        c = out["limaml_vs_linear"]["overall"]
        lo, hi = c["ci95"]
        assert lo <= c["delta"] <= hi
        covered += lo <= 0.0 <= hi
        if seed == 0:
            assert lo <= 0.0 <= hi and c["p_value"] > 0.05
    assert covered >= 16, covered  # expected ~19 of 20


def _reference_interval(users: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, n_resamples: int,
                        seed: int, unit: str) -> Tuple[float, float]:
    """A slow, plain-loop percentile bootstrap of AUC(a) - AUC(b), over users or over rows."""
    rng = np.random.default_rng(seed)
    ids = np.unique(users)
    rows_of = {u: np.flatnonzero(users == u) for u in ids}
    deltas = []
    for _ in range(n_resamples):
        if unit == "users":
            idx = np.concatenate([rows_of[u] for u in rng.choice(ids, size=len(ids), replace=True)])
        else:
            idx = rng.integers(0, len(y), len(y))
        if y[idx].all() or not y[idx].any():
            continue
        deltas.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return float(lo), float(hi)


def test_bootstrap_resamples_users_not_rows():
    """Rows of a user are correlated: model A is informative for half the users, B for the others.

    Which users a resample draws then moves the difference far more than drawing rows does: a
    user bootstrap's interval is much wider than a row bootstrap's. The code's interval must
    match a plain-loop user bootstrap, not a row bootstrap.
    """
    rng = np.random.default_rng(5)
    n_users, per_user = 30, 40
    users = np.repeat(np.arange(n_users), per_user)
    n = len(users)
    y = (rng.random(n) < 0.5).astype(np.int64)
    signal = y + rng.normal(0.0, 0.5, n)
    a_good = (np.arange(n_users) % 2 == 0)[users]
    a = np.where(a_good, signal, rng.normal(0.5, 0.5, n))
    b = np.where(a_good, rng.normal(0.5, 0.5, n), signal)
    cohorts = np.full(n, "20-99")
    out = rp.paired_bootstrap(users, y, {"limaml": a, "linear_user_id": b}, cohorts, n_resamples=1000, seed=1)
    c = out["limaml_vs_linear_user_id"]["overall"]
    assert (c["users"], c["examples"]) == (30, 1200)
    width = c["ci95"][1] - c["ci95"][0]
    lo_u, hi_u = _reference_interval(users, y, a, b, 500, seed=2, unit="users")
    lo_r, hi_r = _reference_interval(users, y, a, b, 500, seed=2, unit="rows")
    assert hi_u - lo_u > 2.0 * (hi_r - lo_r)  # the design: clustering matters
    assert 0.75 < width / (hi_u - lo_u) < 1.33
    assert abs(c["ci95"][0] - lo_u) < 0.25 * (hi_u - lo_u) and abs(c["ci95"][1] - hi_u) < 0.25 * (hi_u - lo_u)
    # the cohort slice holds the same rows: same interval up to its own random stream
    cohort = out["limaml_vs_linear_user_id"]["cohorts"]["20-99"]
    assert cohort["delta"] == c["delta"] and (cohort["users"], cohort["examples"]) == (30, 1200)


def test_counts_with_one_heavy_user_and_cohort_slices():
    rng = np.random.default_rng(8)
    # user "heavy" has 300 rows, 40 others 5 rows each; cohorts by user
    users = np.array(["heavy"] * 300 + [f"u{i}" for i in range(40) for _ in range(5)])
    cohorts = np.where(users == "heavy", "100+", np.where(np.char.startswith(users, "u1"), "1-4", "5-19"))
    y = (rng.random(len(users)) < 0.4).astype(int)
    scores = {"limaml": rng.random(len(users)), "global_dnn": rng.random(len(users))}
    out = rp.paired_bootstrap(users, y, scores, cohorts, n_resamples=50)["limaml_vs_global_dnn"]
    n_1_4 = len({u for u in users if u.startswith("u1")})  # u1, u10..u19
    assert (out["overall"]["users"], out["overall"]["examples"]) == (41, 500)
    assert (out["cohorts"]["1-4"]["users"], out["cohorts"]["1-4"]["examples"]) == (n_1_4, 5 * n_1_4)
    assert (out["cohorts"]["5-19"]["users"], out["cohorts"]["5-19"]["examples"]) == (40 - n_1_4, 5 * (40 - n_1_4))
    heavy = out["cohorts"]["100+"]
    # one user: every resample is that user's 300 rows, the interval collapses on the delta
    assert (heavy["users"], heavy["examples"]) == (1, 300)
    assert heavy["ci95"] == [pytest.approx(heavy["delta"])] * 2
    assert out["cohorts"]["0"] == {"delta": None, "ci95": None, "p_value": None, "users": 0, "examples": 0,
                                   "resamples": 0}


def test_seeded():
    d = make_rows(80, 5, seed=4)
    rng, n = d["rng"], len(d["labels"])
    scores = {"limaml": d["p"] + rng.normal(0, 0.2, n), "global_dnn": d["p"] + rng.normal(0, 0.4, n)}
    args = (d["users"], d["labels"], scores, d["cohorts"])
    first = rp.paired_bootstrap(*args, n_resamples=300, seed=7)
    again = rp.paired_bootstrap(*args, n_resamples=300, seed=7)
    assert first == again
    # a different seed moves the interval, not the point estimate
    other = rp.paired_bootstrap(*args, n_resamples=300, seed=8)
    assert other["limaml_vs_global_dnn"]["overall"]["ci95"] != first["limaml_vs_global_dnn"]["overall"]["ci95"]
    assert other["limaml_vs_global_dnn"]["overall"]["delta"] == first["limaml_vs_global_dnn"]["overall"]["delta"]


def test_one_class_cohort_is_null_and_oracle_skipped():
    d = make_rows(60, 5, seed=6)
    y = d["labels"].copy()
    y[d["cohorts"] == "1-4"] = 0  # one class only
    rng, n = d["rng"], len(y)
    scores = {"global_dnn": rng.random(n), "limaml": d["p"], "oracle": d["p"], "linear": rng.random(n)}
    out = rp.paired_bootstrap(d["users"], y, scores, d["cohorts"], n_resamples=100)
    assert list(out) == ["limaml_vs_global_dnn", "limaml_vs_linear"]  # order of scores, oracle skipped
    for key in out:
        c = out[key]["cohorts"]["1-4"]
        assert c == {"delta": None, "ci95": None, "p_value": None, "users": 15, "examples": 75, "resamples": 0}
        assert out[key]["cohorts"]["0"]["delta"] is not None
        assert out[key]["overall"]["ci95"] is not None
    with pytest.raises(ValueError, match="reference model"):
        rp.paired_bootstrap(d["users"], y, {"global_dnn": scores["global_dnn"]}, d["cohorts"])
    with pytest.raises(ValueError, match="shape"):
        rp.paired_bootstrap(d["users"], y, {"limaml": d["p"][:-1]}, d["cohorts"])


def test_chunking_is_bounded_and_consistent():
    """Tiny chunks give the same numbers as one block (the stream is drawn in the same order)."""
    d = make_rows(50, 6, seed=9)
    rng, n = d["rng"], len(d["labels"])
    scores = {"limaml": d["p"] + rng.normal(0, 0.3, n), "global_dnn": rng.random(n)}
    one = rp.paired_bootstrap(d["users"], d["labels"], scores, d["cohorts"], n_resamples=120, chunk_size=500)
    many = rp.paired_bootstrap(d["users"], d["labels"], scores, d["cohorts"], n_resamples=120, chunk_size=7)
    assert one == many


# ---------------------------------------------------------------------------------------------
# baseline_checks


def _stats(auc):
    return {"auc": auc, "auc_ci95": None if auc is None else [auc - 0.01, auc + 0.01], "logloss": 0.6,
            "examples": 100, "users": 10}


def fake_models(aucs: Dict[str, float]) -> dict:
    return {m: {"overall": _stats(a), "cohorts": {c: _stats(a) for c in COHORTS}} for m, a in aucs.items()}


def test_baseline_checks_flags_planted_under_trained_baseline():
    models = fake_models({"limaml": 0.75, "global_dnn": 0.701, "wide_deep_id": 0.73, "linear": 0.704,
                          "linear_user_id": 0.72})
    checks = rp.baseline_checks(models)
    assert set(checks) == {"global_dnn", "wide_deep_id"}
    assert checks["global_dnn"]["counterpart"] == "linear"
    assert checks["global_dnn"]["delta"] == pytest.approx(-0.003)
    assert checks["global_dnn"]["under_trained"] is True
    assert checks["wide_deep_id"] == {"counterpart": "linear_user_id", "auc": 0.73, "counterpart_auc": 0.72,
                                      "delta": pytest.approx(0.01), "under_trained": False}
    # a tie is not a win
    tie = rp.baseline_checks(fake_models({"global_dnn": 0.7, "linear": 0.7}))
    assert tie["global_dnn"]["under_trained"] is True
    # absent counterpart: pair skipped; null AUC: not flagged
    assert rp.baseline_checks(fake_models({"global_dnn": 0.7, "wide_deep_id": 0.7, "linear_user_id": 0.8})) \
        == {"wide_deep_id": {"counterpart": "linear_user_id", "auc": 0.7, "counterpart_auc": 0.8,
                             "delta": pytest.approx(-0.1), "under_trained": True}}
    assert rp.baseline_checks(fake_models({"global_dnn": None, "linear": 0.7}))["global_dnn"]["under_trained"] \
        is False


# ---------------------------------------------------------------------------------------------
# metrics.json keys


def fake_metrics(aucs: Dict[str, float], comparisons=None) -> dict:
    models = fake_models(aucs)
    d = {"dataset": "synthetic", "protocol": "cutoff", "models": models,
         "baseline_checks": rp.baseline_checks(models)}
    if comparisons is not None:
        d["comparisons"] = comparisons
    return d


FLAGGED = {"limaml": 0.75, "global_dnn": 0.701, "wide_deep_id": 0.73, "linear": 0.704, "linear_user_id": 0.72}
GOOD = {**FLAGGED, "linear": 0.690}


def _comparison(delta, ci, p=0.01, users=10, examples=100):
    return {"delta": delta, "ci95": ci, "p_value": p if delta is not None else None, "users": users,
            "examples": examples, "resamples": 0 if delta is None else 1000}


def planted_comparisons() -> dict:
    def entry(delta, ci):
        return {"overall": _comparison(delta, ci),
                "cohorts": {c: (_comparison(None, None) if c == "100+" else _comparison(delta, ci)) for c in COHORTS}}
    return {"limaml_vs_global_dnn": entry(0.049, [0.031, 0.066]),
            "limaml_vs_wide_deep_id": entry(0.004, [-0.006, 0.013]),
            "limaml_vs_linear": entry(-0.02, [-0.035, -0.004])}


def test_validate_metrics_accepts_new_keys():
    rm.validate_metrics(fake_metrics(FLAGGED, planted_comparisons()))
    d = make_rows(80, 4, seed=12)
    real = rp.paired_bootstrap(d["users"], d["labels"], {"limaml": d["p"], "linear": d["rng"].random(320)},
                               d["cohorts"], n_resamples=50)
    rm.validate_metrics(fake_metrics(FLAGGED, real))
    old = fake_metrics(FLAGGED)
    del old["baseline_checks"]
    rm.validate_metrics(old)  # an older metrics.json without the new keys


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d["comparisons"]["limaml_vs_global_dnn"]["overall"].__setitem__("ci95", [0.06, 0.03]),
     "comparisons.limaml_vs_global_dnn.overall.ci95: lower bound above upper bound"),
    (lambda d: d["comparisons"]["limaml_vs_linear"]["cohorts"]["100+"].__setitem__("ci95", [0.0, 0.1]),
     "comparisons.limaml_vs_linear.cohorts.100+.ci95: must be null when delta is null"),
    (lambda d: d["comparisons"]["limaml_vs_linear"]["cohorts"].pop("0"),
     "comparisons.limaml_vs_linear.cohorts.0: missing"),
    (lambda d: d["comparisons"]["limaml_vs_linear"]["overall"].__setitem__("p_value", 1.5),
     "comparisons.limaml_vs_linear.overall.p_value"),
    (lambda d: d["comparisons"]["limaml_vs_linear"]["overall"].__setitem__("users", 2.0),
     "comparisons.limaml_vs_linear.overall.users: expected an int"),
    (lambda d: d["comparisons"].__setitem__("limaml_vs_xgboost", d["comparisons"]["limaml_vs_linear"]),
     "comparisons.limaml_vs_xgboost"),
    (lambda d: d["baseline_checks"]["global_dnn"].__setitem__("under_trained", False),
     "baseline_checks.global_dnn.under_trained"),
    (lambda d: d["baseline_checks"]["global_dnn"].__setitem__("counterpart", "linear_user_id"),
     "baseline_checks.global_dnn.counterpart"),
    (lambda d: d["baseline_checks"]["global_dnn"].__setitem__("auc", 0.9),
     "baseline_checks.global_dnn.delta"),
    (lambda d: d["baseline_checks"].__setitem__("linear", {}), "baseline_checks.linear: unexpected key"),
])
def test_validate_metrics_rejects_bad_new_keys(mutate, path):
    bad = copy.deepcopy(fake_metrics(FLAGGED, planted_comparisons()))
    mutate(bad)
    with pytest.raises(rm.MetricsShapeError) as err:
        rm.validate_metrics(bad)
    assert path in str(err.value)


def test_model_source_accepts_linear_models():
    assert rm.ModelSource("linear", "/tmp/x", "candidate").name == "linear"
    assert rm.ModelSource("linear_user_id", "/tmp/x", "baseline").name == "linear_user_id"
    assert rm.REQUIRED_MODELS == ("limaml", "global_dnn", "wide_deep_id")


# ---------------------------------------------------------------------------------------------
# HTML


def _render(metrics: dict, out_dir) -> str:
    from report.html import render_report

    with open(render_report(metrics, {}, None, str(out_dir))) as f:
        return f.read()


WARNING = ("global_dnn does not beat its linear counterpart linear: 0.701 vs 0.704 AUC; "
           "treat it as under-trained")


def test_html_warns_about_flagged_baseline_only(tmp_path):
    flagged = _render(fake_metrics(FLAGGED, planted_comparisons()), tmp_path / "flagged")
    assert 'id="baseline-warning"' in flagged
    assert WARNING in flagged
    assert "wide_deep_id does not beat" not in flagged
    good = _render(fake_metrics(GOOD, planted_comparisons()), tmp_path / "good")
    assert 'id="baseline-warning"' not in good and "under-trained" not in good


def test_html_says_a_baseline_that_equals_its_linear_counterpart_fell_back_to_it(tmp_path):
    same = _render(fake_metrics({**FLAGGED, "wide_deep_id": 0.72}, planted_comparisons()), tmp_path)
    assert ("wide_deep_id is its linear counterpart linear_user_id (0.720 AUC): its deep part did "
            "not beat the linear model significantly on held-out users") in same
    assert WARNING in same  # the strictly worse global_dnn keeps the under-trained warning
    assert "wide_deep_id does not beat" not in same


def test_html_paired_section_and_linear_models(tmp_path):
    from report.html import paired_verdict

    page = _render(fake_metrics(FLAGGED, planted_comparisons()), tmp_path)
    assert 'id="plot-paired-lift"' in page
    table = page.split('<table id="paired-table"', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tr>")[2:]  # after the header row
    assert len(rows) == 3 * 6
    by_key = {}
    for row in rows:
        key = row.split("<code>", 1)[1].split("</code>", 1)[0]
        by_key.setdefault(key, []).append(row)
    # overall rows (first per comparison): the verdict follows the interval, not the delta's sign
    row = by_key["limaml_vs_global_dnn"][0]
    assert "LiMAML better" in row and "[+0.0310, +0.0660]" in row
    assert "n.s." in by_key["limaml_vs_wide_deep_id"][0] and "better" not in by_key["limaml_vs_wide_deep_id"][0]
    assert "LiMAML worse" in by_key["limaml_vs_linear"][0]
    assert "AUC undefined" in by_key["limaml_vs_linear"][-1]  # cohort 100+: null
    assert paired_verdict({"delta": 0.01, "ci95": [0.0, 0.02]}) == "n.s."  # touching 0 is not excluding it
    # linear models are in the AUC table like the others (6 slices each)
    slice_table = page.split('<table id="slice-table"', 1)[1].split("</table>", 1)[0]
    assert slice_table.count("<code>linear</code>") == 6 and slice_table.count("<code>linear_user_id</code>") == 6
    # without comparisons: no paired section, the report still renders
    plain = _render(fake_metrics(GOOD), tmp_path / "plain")
    assert 'id="plot-paired-lift"' not in plain and 'id="paired-table"' not in plain
    assert 'id="plot-auc"' in plain and 'id="plot-lift"' in plain


# ---------------------------------------------------------------------------------------------
# limaml_multi: the multi-block model beside limaml


def planted_multi_rows(seed: int = 5) -> Dict[str, np.ndarray]:
    """limaml = true probability + heavy noise; limaml_multi = the same scores except in cohort
    20-99, where it is the true probability + small noise (better there by construction)."""
    d = make_rows(240, 6, seed=seed)
    rng, n = d["rng"], len(d["labels"])
    limaml = _sigmoid(np.log(d["p"] / (1 - d["p"])) + rng.normal(0.0, 2.0, n))
    multi = limaml.copy()
    better = d["cohorts"] == "20-99"
    multi[better] = d["p"][better] + rng.normal(0.0, 0.01, int(better.sum()))
    multi = np.clip(multi, 1e-4, 1 - 1e-4)
    dnn = rng.random(n)
    return {**d, "scores": {"limaml": limaml, "global_dnn": dnn, "limaml_multi": multi}}


def test_limaml_multi_vs_limaml_interval_excludes_zero_where_planted():
    from report.writer import compare_scored_models

    d = planted_multi_rows()
    out = compare_scored_models(d["users"], d["labels"], d["scores"], d["cohorts"], COHORTS,
                                n_resamples=500, seed=0)
    # limaml vs the single-block models only; the multi-block model against limaml
    assert list(out) == ["limaml_vs_global_dnn", "limaml_multi_vs_limaml"]
    multi = out["limaml_multi_vs_limaml"]
    y, s = d["labels"], d["scores"]
    for cohort in ("0", "1-4", "5-19", "20-99"):
        mask = d["cohorts"] == cohort
        want = roc_auc_score(y[mask], s["limaml_multi"][mask]) - roc_auc_score(y[mask], s["limaml"][mask])
        c = multi["cohorts"][cohort]
        assert c["delta"] == pytest.approx(want, abs=1e-12), cohort
        if cohort == "20-99":
            assert want > 0.1 and c["ci95"][0] > 0 and c["p_value"] < 0.01
        else:  # identical scores outside the planted cohort
            assert c["delta"] == 0.0 and c["ci95"] == [0.0, 0.0]
    assert multi["cohorts"]["100+"]["delta"] is None  # no rows
    rm.validate_metrics(fake_metrics(FLAGGED, out))


def test_model_metrics_from_scores_match_sklearn():
    from sklearn.metrics import log_loss

    from report.score_metrics import model_metrics_from_scores

    d = planted_multi_rows()
    p = d["scores"]["limaml_multi"]
    m = model_metrics_from_scores(d["users"], d["labels"], p, d["cohorts"], COHORTS, n_resamples=400, seed=1)
    assert set(m) == {"overall", "cohorts"} and list(m["cohorts"]) == list(COHORTS)
    slices = [("overall", np.ones(len(p), bool))] + [(c, d["cohorts"] == c) for c in COHORTS if c != "100+"]
    for name, mask in slices:
        s = m["overall"] if name == "overall" else m["cohorts"][name]
        assert s["auc"] == pytest.approx(roc_auc_score(d["labels"][mask], p[mask]), abs=1e-12), name
        assert s["logloss"] == pytest.approx(log_loss(d["labels"][mask], p[mask]), abs=1e-9), name
        assert s["examples"] == int(mask.sum()) and s["users"] == len(set(d["users"][mask]))
        lo, hi = s["auc_ci95"]
        assert lo < s["auc"] < hi and hi - lo < 0.2
    # make_rows fills cohorts 0 .. 20-99 only
    assert m["cohorts"]["100+"] == {"auc": None, "auc_ci95": None, "logloss": None, "examples": 0, "users": 0}
    metrics = fake_metrics(FLAGGED)
    metrics["models"]["limaml_multi"] = m
    rm.validate_metrics(metrics)


def test_html_shows_limaml_multi_beside_limaml(tmp_path):
    import json

    from report.score_metrics import model_metrics_from_scores
    from report.writer import compare_scored_models

    d = planted_multi_rows()
    comparisons = compare_scored_models(d["users"], d["labels"], d["scores"], d["cohorts"], COHORTS,
                                        n_resamples=200, seed=0)
    metrics = fake_metrics(FLAGGED, comparisons)
    metrics["models"]["limaml_multi"] = model_metrics_from_scores(
        d["users"], d["labels"], d["scores"]["limaml_multi"], d["cohorts"], COHORTS, n_resamples=200)
    page = _render(metrics, tmp_path)
    with open(tmp_path / "metrics.json") as f:
        saved = json.load(f)
    assert "limaml_multi" in saved["models"] and "limaml_multi_vs_limaml" in saved["comparisons"]
    slice_table = page.split('<table id="slice-table"', 1)[1].split("</table>", 1)[0]
    assert slice_table.count("<code>limaml_multi</code>") == 6
    assert 'id="multi-block"' in page and 'id="plot-multi-paired"' in page
    table = page.split('<table id="multi-paired-table"', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 6 and all("<code>limaml_multi_vs_limaml</code>" in r for r in rows)
    planted = [r for r in rows if "cohort 20-99" in r]
    assert len(planted) == 1 and "LiMAML multi-block better" in planted[0]
    # the multi-block comparison is not among LiMAML's paired lifts over the baselines
    lift = page.split('<table id="paired-table"', 1)[1].split("</table>", 1)[0]
    assert "limaml_multi" not in lift
