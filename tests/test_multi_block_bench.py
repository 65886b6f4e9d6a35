"""``limaml bench serve --blocks`` smoke: both models are built, served and measured (no timing
assertions: only that each row exists, reports its model and was served without error)."""
from __future__ import annotations

from benchmarks.serve_blocks import format_side_by_side, run_block_bench


def test_block_bench_reports_both_models(tmp_path):
    rows = run_block_bench(str(tmp_path), users=30, items=40, candidate_counts=(3,),
                           concurrencies=(1,), max_requests=5, max_seconds=2.0)
    assert [(r["model"], r["meta_blocks"]) for r in rows] == [
        ("single_block", "user"), ("multi_block", "user+user_x_genre")]
    assert all(r["requests"] == 5 and r["signature"] == "predict_raw" for r in rows)
    table = format_side_by_side(rows).splitlines()
    assert len(table) == 2 and table[1].split()[:2] == ["3", "1"]
