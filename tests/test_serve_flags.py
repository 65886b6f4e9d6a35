"""``limaml serve|score`` stack flags (batching, the stand-in's process, ranker workers) reach the local stack."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("flags,want", [([], True), (["--no-batch-requests"], False),
                                        (["--batch-requests"], True)])
def test_batch_requests_flag_reaches_the_local_stack(monkeypatch, flags, want):
    from limaml import cli
    from limaml.commands import serve
    from serving import local_stack

    seen = {}

    def fake_start(run_dir, **kwargs):
        seen.update(kwargs, run_dir=run_dir)
        return "stack"

    monkeypatch.setattr(local_stack, "start_local_stack", fake_start)
    args = cli.build_parser().parse_args(["serve", "--run", "/some/run", *flags])
    assert serve._start(args) == "stack"
    assert seen["run_dir"] == "/some/run" and seen["batch_requests"] is want


@pytest.mark.parametrize("command,flags,want", [
    ("serve", [], (True, None)),  # serve: the stand-in in its own process
    ("score", [], (False, None)),  # one request: no second process to start
    ("serve", ["--no-model-server-process", "--workers", "3"], (False, 3)),
    ("score", ["--model-server-process"], (True, None)),
])
def test_model_server_process_and_workers_reach_the_local_stack(monkeypatch, command, flags, want):
    from limaml import cli
    from limaml.commands import serve
    from serving import local_stack

    seen = {}
    monkeypatch.setattr(local_stack, "start_local_stack",
                        lambda run_dir, **kwargs: seen.update(kwargs) or "stack")
    extra = ["--user", "u1", "--candidates", "-"] if command == "score" else []
    args = cli.build_parser().parse_args([command, "--run", "/some/run", *extra, *flags])
    assert serve._start(args) == "stack"
    assert (seen["model_server_process"], seen["workers"]) == want
