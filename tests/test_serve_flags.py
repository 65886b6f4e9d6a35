"""``limaml serve|score --[no-]batch-requests`` (default on) reaches the ranker of the local stack."""
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
