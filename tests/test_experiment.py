"""The experiment harness: the validation split never holds query rows, paired intervals over
users and seeds detect a planted difference and not an absent one, tuning budgets are equal."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from limaml.config import LimamlConfig, ProtocolConfig
from limaml.data import protocols
from limaml.data.synthetic import SyntheticConfig, generate
from trainer import experiment, tuning

COHORTS = ["a", "b"]


def planted_rows(n_users=300, rows_per_user=12, seed=0):
    rng = np.random.RandomState(seed)
    users = np.repeat(np.arange(n_users), rows_per_user)
    p = rng.uniform(0.05, 0.95, users.size)
    y = (rng.rand(users.size) < p).astype(np.float32)
    cohort = np.where(users % 2 == 0, "a", "b").astype(object)
    return rng, users, p, y, cohort


def test_paired_interval_excludes_zero_for_a_planted_difference():
    rng, users, p, y, cohort = planted_rows()
    good = {s: p + rng.normal(0, 0.05, p.size) for s in range(2)}
    noise = {s: rng.rand(p.size) for s in range(2)}
    out = experiment.paired_over_seeds(y, users, cohort, good, noise, COHORTS, n_resamples=300)
    lo, hi = out["overall"]["ci95"]
    assert out["overall"]["delta"] > 0.1 and lo > 0 and lo <= out["overall"]["delta"] <= hi
    assert out["overall"]["users"] == 300 and out["cohorts"]["a"]["users"] == 150
    for c in COHORTS:
        assert out["cohorts"][c]["ci95"][0] > 0


def test_paired_interval_of_identical_scorers_is_zero_and_of_two_noises_contains_zero():
    rng, users, p, y, cohort = planted_rows(seed=1)
    same = {0: rng.rand(p.size)}
    out = experiment.paired_over_seeds(y, users, cohort, same, dict(same), COHORTS, n_resamples=200)
    assert out["overall"]["delta"] == 0 and out["overall"]["ci95"] == [0.0, 0.0]
    a, b = {0: rng.rand(p.size)}, {0: rng.rand(p.size)}
    out = experiment.paired_over_seeds(y, users, cohort, a, b, COHORTS, n_resamples=300)
    lo, hi = out["overall"]["ci95"]
    assert lo < 0 < hi


@pytest.mark.parametrize("name", ["budget", "cutoff"])
def test_validation_split_holds_no_query_row_and_only_trainable_rows(name):
    frame = generate(SyntheticConfig(num_users=400, num_items=50, mean_interactions=15, seed=0))
    protocol = ProtocolConfig(name=name)
    rows, _ = experiment.split(frame, protocol)
    key = ["user_id", "item_id", "timestamp"]
    query = rows[rows[protocols.ROLE] == "query"][key]
    vrows, vusers = experiment.validation_split(frame, protocol)
    assert len(vusers) > 0
    overlap = vrows.merge(query, on=key)
    assert len(overlap) == 0
    trainable = rows[rows[protocols.ROLE].isin(protocols.TRAINABLE_ROLES)]
    assert len(vrows.merge(trainable[key], on=key)) == len(vrows)


def test_tune_refuses_unequal_budgets_and_unknown_fields():
    frame = pd.DataFrame()
    with pytest.raises(ValueError, match="same tuning budget"):
        tuning.tune(frame, LimamlConfig(), {"linear": [{}], "limaml": [{}, {}]})
    with pytest.raises(ValueError, match="unknown field"):
        tuning.apply_overrides(LimamlConfig(), {"model": {"widht": 3}})
    cfg = tuning.apply_overrides(LimamlConfig(), {"model": {"global_hidden": [8, 4]}})
    assert cfg.model.global_hidden == (8, 4)


def test_experiment_page_gives_verdicts_from_the_paired_intervals(tmp_path):
    from report.experiment_html import render_experiment

    comp = {"overall": {"delta": 0.02, "ci95": [0.01, 0.03], "users": 100},
            "cohorts": {"a": {"delta": 0.01, "ci95": [-0.01, 0.03], "users": 50},
                        "b": {"delta": -0.03, "ci95": [-0.05, -0.01], "users": 50}}}
    summary = {"dataset": "d", "protocol": "budget", "seeds": [0, 1], "n_query": 10,
               "auc_mean_sd": {"limaml": {"overall": [0.7, 0.01], "a": [0.71, 0.0], "b": [0.69, 0.02]},
                               "linear": {"overall": [0.68, 0.0], "a": [0.7, 0.0], "b": [None, None]}},
               "comparisons": {"limaml_vs_linear": comp}}
    page = open(render_experiment(summary, str(tmp_path))).read()
    rows = [r for r in page.split("<tr>") if r.startswith("<td>limaml_vs_linear")]
    verdicts = [r.split("<td>")[-1].split("</td>")[0] for r in rows]
    assert verdicts == ["LiMAML better", "n.s.", "LiMAML worse"]
    assert page.count("<img") == 2 and "experiment-auc-support" not in page
    summary["auc_by_support_rows"] = {"limaml": {"overall": [0.7, 0.01], "1": [0.6, 0.02]}}
    page = open(render_experiment(summary, str(tmp_path))).read()
    assert page.count("<img") == 3 and 'id="experiment-auc-support"' in page


def test_paired_delta_over_seeds_is_the_mean_of_per_seed_auc_differences():
    from sklearn.metrics import roc_auc_score

    rng, users, p, y, cohort = planted_rows(seed=2)
    ref = {s: p + rng.normal(0, 0.2 + 0.1 * s, p.size) for s in range(3)}
    other = {s: p + rng.normal(0, 0.5, p.size) for s in range(3)}
    out = experiment.paired_over_seeds(y, users, cohort, ref, other, COHORTS, n_resamples=100)
    want = np.mean([roc_auc_score(y, ref[s]) for s in ref]) - np.mean(
        [roc_auc_score(y, other[s]) for s in other])
    assert out["overall"]["delta"] == pytest.approx(want, abs=6e-5)  # rounded to 4 digits
    m = cohort == "a"
    want_a = np.mean([roc_auc_score(y[m], ref[s][m]) - roc_auc_score(y[m], other[s][m]) for s in ref])
    assert out["cohorts"]["a"]["delta"] == pytest.approx(want_a, abs=6e-5)


def test_deep_baselines_inherit_their_linear_counterparts_tuned_c_unless_they_set_one():
    tuned = {"linear": {"train": {"linear_c_grid": [3.0]}},
             "linear_user_id": {"train": {"linear_c_grid": [0.3]}},
             "global_dnn": {"model": {"categorical_embedding_dim": 32}},
             "wide_deep": {"train": {"linear_c_grid": [1.0], "baseline_lr": 0.003}}}
    assert tuning.tuned_overrides(tuned, "global_dnn") == {
        "model": {"categorical_embedding_dim": 32}, "train": {"linear_c_grid": [3.0]}}
    assert tuning.tuned_overrides(tuned, "wide_deep") == {
        "train": {"linear_c_grid": [1.0], "baseline_lr": 0.003}}  # its own choice wins
    assert tuning.tuned_overrides(tuned, "limaml") == {}
    assert tuning.tuned_overrides(None, "global_dnn") == {}
    assert "linear_c_grid" not in tuned["global_dnn"].get("train", {})  # input not mutated


def test_support_slices_name_every_count_of_support_rows():
    counts = np.array([0, 1, 2, 3, 4, 5, 9, 10, 19, 20, 32])
    assert list(experiment.support_slices(counts)) == [
        "0", "1", "2", "3-4", "3-4", "5-9", "5-9", "10-19", "10-19", "20+", "20+"]


def test_report_averages_the_support_slices_over_seeds():
    by_seed = {0: {"overall": 0.70, "1": 0.60, "2": None}, 1: {"overall": 0.72, "1": 0.64, "2": 0.8}}
    result = {"auc": {"m": {0: {"overall": 0.7}, 1: {"overall": 0.72}}}, "scores": {},
              "n_query": 1, "n_train": 1, "seconds": {}, "auc_by_support": {"m": by_seed}}
    out = experiment.report(result, LimamlConfig())
    rows = out["auc_by_support_rows"]["m"]
    assert rows["overall"] == [0.71, 0.01] and rows["1"] == [0.62, 0.02]
    assert rows["2"] == [0.8, 0.0] and rows["0"] == [None, None]  # one seed / no seed has it


def test_a_model_setting_that_would_change_the_prepared_data_is_refused_by_name(monkeypatch):
    """The split, the MEG window and the user-id hashing are prepared once for every model: a
    variant that changes one of them would be silently ignored, so the run refuses it."""
    import dataclasses

    frame = generate(SyntheticConfig(num_users=200, num_items=30, mean_interactions=10, seed=0))
    cfg = LimamlConfig(dataset="synthetic", protocol=ProtocolConfig(name="cutoff"))
    k128 = dataclasses.replace(cfg, embeddings=dataclasses.replace(cfg.embeddings, max_recent=128))
    monkeypatch.setattr(experiment, "fit_scores",  # refused before any model trains
                        lambda *a, **k: pytest.fail("a model trained before the check"))
    with pytest.raises(ValueError, match=r"limaml@k128: embeddings.max_recent 128 differs from "
                                         r"the run's 32"):
        experiment.run(frame, cfg, models=["linear", "limaml@k128"], seeds=[0], configs={"k128": k128})


def test_tune_merge_joins_disjoint_parts_and_refuses_mismatched_ones():
    def part(models, budget=2, n_val=50):
        table = [{"model": m, "candidate": i, "overrides": {"c": i}, "val_auc": 0.6 + i / 10,
                  "val_logloss": 0.6} for m in models for i in range(budget)]
        return {"budget": budget, "n_val_query": n_val, "table": table,
                "best": {m: {"c": budget - 1} for m in models}}

    out = tuning.merge([part(["limaml"]), part(["linear", "wide_deep"])])
    assert out["best"] == {"limaml": {"c": 1}, "linear": {"c": 1}, "wide_deep": {"c": 1}}
    assert [r["model"] for r in out["table"]] == ["limaml"] * 2 + ["linear"] * 2 + ["wide_deep"] * 2
    assert (out["budget"], out["n_val_query"]) == (2, 50)
    with pytest.raises(ValueError, match="same tuning budget"):
        tuning.merge([part(["limaml"]), part(["linear"], budget=3)])
    with pytest.raises(ValueError, match="different validation rows"):
        tuning.merge([part(["limaml"]), part(["linear"], n_val=49)])
    with pytest.raises(ValueError, match="two parts"):
        tuning.merge([part(["limaml"]), part(["limaml", "linear"])])
    with pytest.raises(ValueError, match="nothing to merge"):
        tuning.merge([])
