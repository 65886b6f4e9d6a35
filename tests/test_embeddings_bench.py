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


def test_worker_threads_share_the_cores_and_restore_the_environment(monkeypatch):
    from benchmarks import embeddings_bench

    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.setattr(embeddings_bench.os, "cpu_count", lambda: 8)
    with embeddings_bench.worker_threads(3) as threads:
        assert threads == 2 and embeddings_bench.os.environ["TF_NUM_INTRAOP_THREADS"] == "2"
    assert "TF_NUM_INTRAOP_THREADS" not in embeddings_bench.os.environ
    with embeddings_bench.worker_threads(1) as threads:  # in-process: nothing set
        assert threads is None and "TF_NUM_INTRAOP_THREADS" not in embeddings_bench.os.environ
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "5")    # the user's setting wins
    with embeddings_bench.worker_threads(4) as threads:
        assert threads == 5
    assert embeddings_bench.os.environ["TF_NUM_INTRAOP_THREADS"] == "5"
