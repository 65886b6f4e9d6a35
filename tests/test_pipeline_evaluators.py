"""The pipeline's TFMA Evaluators: TFMA's own confidence intervals are off unless asked for
(``EvaluationConfig.tfma_confidence_intervals``, ``limaml run --tfma-intervals``); the report's
intervals come from its bootstrap over users (tests/test_report.py)."""
from __future__ import annotations

import dataclasses

import pytest
import tensorflow_model_analysis as tfma
from google.protobuf import json_format

from limaml.config import EvaluationConfig, LimamlConfig

EVALUATORS = ("EvaluatorLimaml", "EvaluatorGlobalDnn", "EvaluatorLinear", "EvaluatorLimamlMulti")


def _eval_configs(config: LimamlConfig):
    from pipeline.pipeline import create_components

    nodes = {n.id: n for n in create_components(config, "/data", "/serving")}
    return {name: json_format.Parse(nodes[name].exec_properties["eval_config"], tfma.EvalConfig())
            for name in EVALUATORS if name in nodes}


@pytest.mark.parametrize("on", [False, True])
def test_evaluators_compute_tfma_intervals_only_when_asked(on):
    config = dataclasses.replace(LimamlConfig(), evaluation=EvaluationConfig(
        multi_block=True, tfma_confidence_intervals=on))
    configs = _eval_configs(config)
    assert set(configs) == set(EVALUATORS)
    for name, eval_config in configs.items():
        assert eval_config.options.compute_confidence_intervals.value is on, name
        # the blessing threshold (on LiMAML's Evaluator) does not depend on the intervals
        assert len(eval_config.model_specs) == (2 if name in ("EvaluatorLimaml", "EvaluatorLinear") else 1)


def test_default_is_off_and_the_cli_flag_turns_it_on(monkeypatch, tmp_path):
    from limaml import cli

    assert EvaluationConfig().tfma_confidence_intervals is False
    seen = {}

    def fake_main_job(config, output, data_dir, workers=1, beam_args=()):
        seen["config"] = config

    from limaml.data import prepare, synthetic
    from pipeline import main_job

    monkeypatch.setattr(main_job, "run_main_job", fake_main_job)
    data = tmp_path / "data"
    prepare.prepare("synthetic", str(data), synthetic_cfg=synthetic.SyntheticConfig(num_users=50, num_items=20))
    for flags, want in (([], False), (["--tfma-intervals"], True)):
        assert cli.main(["run", "--output", str(tmp_path / "run"), "--data", str(data), *flags]) == 0
        assert seen["config"].evaluation.tfma_confidence_intervals is want
