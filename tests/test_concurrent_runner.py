"""The concurrent local runner (pipeline/concurrent_runner.py): scheduling and the ML Metadata lock."""
from __future__ import annotations

import threading
import time

import pytest
from ml_metadata.proto import metadata_store_pb2

from pipeline.concurrent_runner import (
    ConcurrentDagRunner,
    SerializedMetadata,
    critical_path_priority,
    descendant_counts,
    run_dag,
)

# a -> b -> c -> d (the long chain), a -> e (a short branch), f alone
DAG = {"a": set(), "b": {"a"}, "c": {"b"}, "d": {"c"}, "e": {"a"}, "f": set()}


def test_priority_is_the_longest_path_to_a_sink_then_the_descendants():
    assert critical_path_priority(DAG) == {"a": 4, "b": 3, "c": 2, "d": 1, "e": 1, "f": 1}
    assert descendant_counts(DAG) == {"a": 4, "b": 2, "c": 1, "d": 0, "e": 0, "f": 0}
    # p and q both head a path of 2; q feeds three nodes, p one: q goes first, whatever the order
    fan = {"p": set(), "q": set(), "p1": {"p"}, "q1": {"q"}, "q2": {"q"}, "q3": {"q"}}
    assert run_dag(fan, lambda n: None, max_workers=1, order=list(fan))[:2] == ["q", "p"]


def test_unknown_dependencies_cycles_and_no_workers_are_refused():
    with pytest.raises(ValueError, match="'b' depends on unknown node 'zz'"):
        critical_path_priority({"a": set(), "b": {"zz"}})
    with pytest.raises(ValueError, match="cycle"):
        critical_path_priority({"a": {"b"}, "b": {"a"}})
    with pytest.raises(ValueError, match="max_workers must be >= 1, got 0"):
        run_dag(DAG, lambda n: None, max_workers=0)
    with pytest.raises(ValueError, match="max_workers must be >= 1, got 0"):
        ConcurrentDagRunner(max_workers=0)


class _Recorder:
    """launch() that records start/end times and the most nodes running at once."""

    def __init__(self, seconds=0.05, fail=(), slow=()):
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.start, self.end = {}, {}
        self.seconds, self.fail, self.slow = seconds, set(fail), set(slow)

    def __call__(self, node):
        with self.lock:
            self.start[node] = time.monotonic()
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds * (6 if node in self.slow else 1))
        with self.lock:
            self.running -= 1
            self.end[node] = time.monotonic()
        if node in self.fail:
            raise RuntimeError(f"{node} broke")


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_every_node_runs_once_after_its_upstream_and_within_the_worker_limit(workers):
    rec = _Recorder(slow={"f"})  # f still runs when a's successors b and e become ready
    started = run_dag(DAG, rec, max_workers=workers)
    assert sorted(started) == sorted(DAG) and set(rec.end) == set(DAG)
    for node, ups in DAG.items():
        for u in ups:
            assert rec.start[node] >= rec.end[u], (node, u)
    assert rec.most == min(workers, 3)  # f, b and e are the most that can run together


def test_independent_nodes_overlap_and_the_long_chain_goes_first():
    # two nodes that each wait for the other: only a runner that runs them at once finishes
    barrier = threading.Barrier(2, timeout=5)
    run_dag({"x": set(), "y": set()}, lambda n: barrier.wait(), max_workers=2)
    # one worker, the tie-break order reversed: the longer remaining path still goes first
    # (a 4 over f 1, then b 3, c 2 over e and f 1); equal paths (d, e, f) follow the order
    started = run_dag(DAG, lambda n: None, max_workers=1, order=["f", "e", "d", "c", "b", "a"])
    assert started == ["a", "b", "c", "f", "e", "d"]


def test_a_failure_stops_new_launches_lets_running_nodes_finish_and_is_raised():
    rec = _Recorder(seconds=0.2, fail={"b"})
    # 'b' and 'e' start together after 'a'; 'b' fails: 'e' finishes, 'c', 'd' never start
    with pytest.raises(RuntimeError, match="b broke"):
        run_dag({k: v for k, v in DAG.items() if k != "f"}, rec, max_workers=2)
    assert set(rec.start) == {"a", "b", "e"} and "e" in rec.end


def test_metadata_sessions_of_different_connections_never_overlap(tmp_path):
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "m.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    lock = threading.RLock()
    first, second = SerializedMetadata(config, lock), SerializedMetadata(config, lock)
    entered = threading.Event()

    def other():
        with second:
            entered.set()

    with first:
        with first:  # the launcher nests sessions on one connection: re-entrant
            t = threading.Thread(target=other)
            t.start()
            assert not entered.wait(0.3)  # blocked while the first connection has a session
    assert entered.wait(5)
    t.join()
    assert lock.acquire(blocking=False)  # every session released it
    lock.release()
