"""The embedding store benchmark returns sane numbers (benchmarks/embedding_store_bench.py)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.embedding_store_bench import bench_stores


def test_bench_stores_reports_both_stages(tmp_path):
    n = 2000
    emb = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    ids = [f"u{i}" for i in range(n)]
    rows = bench_stores(emb, ids, out_dir=str(tmp_path), batch_size=500)
    assert [r["stage"] for r in rows] == ["parquet", "bigtable"]
    for r in rows:
        assert r["users"] == n and r["users_per_s"] > 0 and r["peak_rss_mb"] > 10
    assert (tmp_path / "model_version=bench").is_dir()
    with pytest.raises(ValueError, match="redis"):
        bench_stores(emb, ids, stages=("redis",))
