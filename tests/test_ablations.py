"""The ablation table's bookkeeping (benchmarks/ablations.py): toggles, refusals, signs."""
from __future__ import annotations

import pytest

from benchmarks import ablations as A
from limaml.config import LimamlConfig
from trainer.tuning import apply_overrides


def test_toggles_read_the_default_and_constants_apply():
    plain = LimamlConfig()
    tuned = apply_overrides(plain, {"model": {"interaction": "dot", "wide": True}})
    assert plain.model.interaction == "none" and not plain.model.wide
    got = A.variant_configs(plain, ["dot", "wide", "no_adaptation"])
    assert got["dot"].model.interaction == "dot" and got["wide"].model.wide
    assert got["no_adaptation"].maml.adaptation_steps == 0
    assert got[A.DEFAULT] == plain
    flipped = A.variant_configs(tuned, ["dot", "wide"])
    assert flipped["dot"].model.interaction == "none" and flipped["dot"].model.wide
    assert not flipped["wide"].model.wide and flipped["wide"].model.interaction == "dot"
    # the tuned ML-1M settings flip the other way round from the built-in ones
    ml1m = apply_overrides(plain, {"maml": {"outer_l2": 1e-5, "meg_row_shrinkage": 4.0}})
    assert plain.maml.outer_l2 == 3e-5 and plain.maml.meg_row_shrinkage == 0.0
    on_plain = A.variant_configs(plain, ["outer_l2", "row_shrinkage"])
    on_ml1m = A.variant_configs(ml1m, ["outer_l2", "row_shrinkage"])
    assert on_plain["outer_l2"].maml.outer_l2 == 1e-5 and on_ml1m["outer_l2"].maml.outer_l2 == 3e-5
    assert on_plain["row_shrinkage"].maml.meg_row_shrinkage == 4.0
    assert on_ml1m["row_shrinkage"].maml.meg_row_shrinkage == 0.0


def test_unknown_and_no_op_directions_are_refused():
    with pytest.raises(ValueError, match=r"unknown direction\(s\) \['nope'\]"):
        A.variant_configs(LimamlConfig(), ["nope"])
    already = apply_overrides(LimamlConfig(), {"maml": {"adaptation_steps": 0}})
    with pytest.raises(ValueError, match="'no_adaptation' changes nothing"):
        A.variant_configs(already, ["no_adaptation"])


def test_effect_table_reports_variant_minus_default():
    # the report's comparison is default − variant; the table must flip it (interval too)
    report = {
        "auc_mean_sd": {"limaml@default": {"overall": [0.75, 0.0], "a": [0.7, 0.0]},
                        "limaml@dot": {"overall": [0.74, 0.0], "a": [0.72, 0.0]}},
        "comparisons": {"limaml@default_vs_limaml@dot": {
            "overall": {"delta": 0.01, "ci95": [0.004, 0.016]},
            "cohorts": {"a": {"delta": -0.02, "ci95": [-0.03, 0.001]}}}},
    }
    rows = A.effect_table(report, {"dot": {"model": {"interaction": "dot"}}}, ["a"])
    assert rows[0]["effect"]["overall"] == {"delta": -0.01, "ci95": [-0.016, -0.004]}
    assert rows[0]["effect"]["a"] == {"delta": 0.02, "ci95": [-0.001, 0.03]}
    assert rows[0]["auc"] == {"overall": 0.74, "a": 0.72}
    md = A.markdown(rows, report["auc_mean_sd"]["limaml@default"], ["a"], {"dot": "dot"})
    assert ("| dot | dot | `model.interaction=\"dot\"` | -0.0100* [-0.016, -0.004] | "
            "+0.0200 [-0.001, +0.030] |") in md
