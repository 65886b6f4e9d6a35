"""A local TFX runner that runs independent components at the same time.

TFX's ``LocalDagRunner`` launches one node at a time in topological order (its own TODO says
"multi-threaded execution so that independent components can be run in parallel"). Our DAG
has wide levels: after Transform, TaskGen and the four baseline trainers do not depend on one
another; after the joins, the three Evaluators do not either. This runner launches every node
with TFX's own portable :class:`~tfx.orchestration.portable.launcher.Launcher` (the same driver,
executor and publisher as ``LocalDagRunner``), ``max_workers`` nodes at a time, each as soon
as its upstream nodes have finished, longest remaining path first, then the node that more
nodes wait for (list scheduling on the critical path).

ML Metadata on SQLite is not safe for concurrent writers (a locked database aborts the
process), so every ML Metadata session of every launcher goes through one lock
(:class:`SerializedMetadata`); only the executors, where the time goes, overlap.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime
import logging
import threading
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set

from tfx.dsl.compiler import constants
from tfx.orchestration import metadata
from tfx.orchestration.local import runner_utils
from tfx.orchestration.portable import launcher, runtime_parameter_utils, tfx_runner
from tfx.proto.orchestration import pipeline_pb2

log = logging.getLogger(__name__)


class SerializedMetadata(metadata.Metadata):
    """An ML Metadata connection whose sessions (``with m: ...``) hold a lock shared by all
    connections given the same lock; re-entrant within a thread, as the launcher nests them."""

    def __init__(self, connection_config, lock: threading.RLock) -> None:
        super().__init__(connection_config)
        self._lock = lock

    def __enter__(self) -> "SerializedMetadata":
        self._lock.acquire()
        try:
            return super().__enter__()
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._lock.release()


def critical_path_priority(upstream: Mapping[str, Set[str]]) -> Dict[str, int]:
    """For each node, the number of nodes on its longest path to a sink (itself included).

    Args:
        upstream: node id -> ids of the nodes it depends on.

    Raises:
        ValueError: a dependency on an unknown node, or a cycle.
    """
    downstream: Dict[str, Set[str]] = {n: set() for n in upstream}
    for node, ups in upstream.items():
        for u in ups:
            if u not in downstream:
                raise ValueError(f"node {node!r} depends on unknown node {u!r}")
            downstream[u].add(node)
    memo: Dict[str, int] = {}
    visiting: Set[str] = set()

    def depth(n: str) -> int:
        if n in memo:
            return memo[n]
        if n in visiting:
            raise ValueError(f"the pipeline has a cycle through {n!r}")
        visiting.add(n)
        memo[n] = 1 + max((depth(d) for d in downstream[n]), default=0)
        visiting.discard(n)
        return memo[n]

    return {n: depth(n) for n in upstream}


def descendant_counts(upstream: Mapping[str, Set[str]]) -> Dict[str, int]:
    """For each node, how many nodes depend on it directly or indirectly."""
    downstream: Dict[str, Set[str]] = {n: set() for n in upstream}
    for node, ups in upstream.items():
        for u in ups:
            downstream.setdefault(u, set()).add(node)
    memo: Dict[str, Set[str]] = {}

    def below(n: str) -> Set[str]:
        if n not in memo:
            memo[n] = set()
            for d in downstream[n]:
                memo[n] |= {d} | below(d)
        return memo[n]

    return {n: len(below(n)) for n in upstream}


def run_dag(upstream: Mapping[str, Set[str]], launch: Callable[[str], None], max_workers: int,
            order: Optional[Sequence[str]] = None) -> List[str]:
    """Runs ``launch(node)`` for every node once its upstream nodes have finished, at most
    ``max_workers`` at a time, the node with the longest remaining path first (ties: the one
    with more descendants, then ``order``).

    A failure stops new launches; the nodes already running finish; then the first failure
    is raised. Returns the nodes in the order they were started.

    Raises:
        ValueError: ``max_workers`` < 1, an unknown dependency or a cycle.
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    priority = critical_path_priority(upstream)
    waiting = descendant_counts(upstream)
    rank = {n: i for i, n in enumerate(order or sorted(upstream))}
    done: Set[str] = set()
    started: List[str] = []
    running: Dict[cf.Future, str] = {}
    failure: Optional[BaseException] = None
    with cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="limaml-node") as pool:
        while True:
            if failure is None:
                ready = [n for n in upstream if n not in done and n not in started
                         and upstream[n] <= done]
                ready.sort(key=lambda n: (-priority[n], -waiting[n], rank.get(n, len(rank))))
                for n in ready[:max_workers - len(running)]:
                    started.append(n)
                    running[pool.submit(launch, n)] = n
            if not running:
                break
            finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                node = running.pop(fut)
                exc = fut.exception()
                if exc is None:
                    done.add(node)
                elif failure is None:
                    failure = exc
                    if running:
                        log.warning("%s failed; waiting for %s to finish", node,
                                    ", ".join(sorted(running.values())))
    if failure is not None:
        raise failure
    return started


class ConcurrentDagRunner(tfx_runner.IrBasedRunner):
    """Runs a pipeline locally like ``LocalDagRunner``, ``max_workers`` components at a time.

    Args:
        max_workers: components that may run at once (1: one at a time, as ``LocalDagRunner``).
    """

    def __init__(self, max_workers: int = 2) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers = max_workers
        self.started: List[str] = []

    def run_with_ir(self, pipeline: pipeline_pb2.Pipeline,
                    run_options: Optional[pipeline_pb2.RunOptions] = None, **kwargs) -> None:
        """Runs every node of the compiled pipeline (partial runs are not supported)."""
        if run_options is not None or kwargs:
            raise ValueError("ConcurrentDagRunner runs whole pipelines only; use "
                             "tfx.orchestration.LocalDagRunner for partial runs")
        runtime_parameter_utils.substitute_runtime_parameter(
            pipeline, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: datetime.datetime.now().isoformat()})
        deployment_config = runner_utils.extract_local_deployment_config(pipeline)
        connection_config = getattr(
            deployment_config.metadata_connection_config,
            deployment_config.metadata_connection_config.WhichOneof("connection_config"))
        lock = threading.RLock()
        nodes = {n.pipeline_node.node_info.id: n.pipeline_node for n in pipeline.nodes}
        upstream = {i: set(node.upstream_nodes) & set(nodes) for i, node in nodes.items()}

        def launch(node_id: str) -> None:
            node = nodes[node_id]
            if node.execution_options.HasField("skip"):
                log.info("Skipping component %s.", node_id)
                return
            launcher.Launcher(
                pipeline_node=node,
                mlmd_connection=SerializedMetadata(connection_config, lock),
                pipeline_info=pipeline.pipeline_info,
                pipeline_runtime_spec=pipeline.runtime_spec,
                executor_spec=runner_utils.extract_executor_spec(deployment_config, node_id),
                custom_driver_spec=runner_utils.extract_custom_driver_spec(deployment_config, node_id),
            ).launch()

        self.started = run_dag(upstream, launch, self.max_workers, order=list(nodes))
