"""A run's ML Metadata read in one place (``pipeline.run_metadata``): artifacts newest first,
node executions for progress, and named errors instead of "no run" for stores that cannot be read
(locked by a writer, damaged, empty), as the local serving stack reports them."""
from __future__ import annotations

import json
import re

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline import run_metadata
from pipeline.progress import ProgressMonitor, format_profile, profile_rows
from serving import local_stack
from serving.local_stack import StackError


def _writable(path: str) -> metadata_store.MetadataStore:
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(cfg)


@pytest.fixture()
def store_path(tmp_path) -> str:
    """A store with three MetaEmbeddings artifacts (versions 3, 5, none) and two node executions."""
    path = str(tmp_path / "metadata.sqlite")
    store = _writable(path)
    art_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="limaml.MetaEmbeddings"))
    arts = []
    for uri, version in (("/e/a", "3"), ("/e/b", "5"), ("/e/c", None)):
        art = metadata_store_pb2.Artifact(type_id=art_type, uri=uri)
        if version:
            art.custom_properties["model_version"].string_value = version
        arts.append(art)
    store.put_artifacts(arts)
    exec_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="tfx.Transform"))
    node_type = store.put_context_type(metadata_store_pb2.ContextType(name="node"))
    other_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline_run"))
    done = metadata_store_pb2.Execution.State.COMPLETE
    running = metadata_store_pb2.Execution.State.RUNNING
    e1, e2 = store.put_executions([metadata_store_pb2.Execution(type_id=exec_type, last_known_state=done),
                                   metadata_store_pb2.Execution(type_id=exec_type, last_known_state=running)])
    c_node, c_run, c_node2 = store.put_contexts([
        metadata_store_pb2.Context(type_id=node_type, name="limaml.Transform"),
        metadata_store_pb2.Context(type_id=other_type, name="run-1"),
        metadata_store_pb2.Context(type_id=node_type, name="limaml.LimamlTrainer")])
    store.put_attributions_and_associations(
        [], [metadata_store_pb2.Association(context_id=c_run, execution_id=e1),
             metadata_store_pb2.Association(context_id=c_node, execution_id=e1),
             metadata_store_pb2.Association(context_id=c_node2, execution_id=e2)])
    return path


def test_artifacts_newest_first_and_unknown_type_is_empty(store_path):
    arts = run_metadata.artifacts_by_type(store_path, "limaml.MetaEmbeddings")
    assert [a.uri for a in arts] == ["/e/c", "/e/b", "/e/a"]
    assert run_metadata.artifacts_by_type(store_path, "limaml.Report") == []
    assert run_metadata.latest_artifact_uri(store_path, "limaml.MetaEmbeddings") == "/e/c"
    with pytest.raises(RuntimeError, match=r"no limaml.Report artifact in .*metadata.sqlite"):
        run_metadata.latest_artifact_uri(store_path, "limaml.Report")
    metas = local_stack.embedding_artifacts(store_path)
    assert [(m.uri, m.model_version) for m in metas] == [("/e/c", None), ("/e/b", "5"), ("/e/a", "3")]


def test_node_executions_and_progress_lines(store_path, tmp_path):
    execs = run_metadata.node_executions(store_path)
    assert [(e.node, e.state_name) for e in execs] == [("Transform", "finished"),
                                                        ("LimamlTrainer", "running")]
    out = tmp_path / "progress.txt"
    with open(out, "w") as fh:
        monitor = ProgressMonitor(store_path, out=fh)
        monitor.poll(run_metadata.open_readonly(store_path))
        monitor.poll(run_metadata.open_readonly(store_path))  # no change: no new line
    lines = [line.split("] ", 1)[1] for line in out.read_text().splitlines()]
    assert lines[1:] == ["LimamlTrainer: running"]
    assert lines[0].startswith("Transform: finished (") and lines[0].endswith(" s)")


def test_component_seconds_span_registration_to_completion(tmp_path):
    # an execution registered as running, completed 0.4 s later: MLMD stamps both times
    import time

    path = str(tmp_path / "metadata.sqlite")
    store = _writable(path)
    exec_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="tfx.Trainer"))
    node_type = store.put_context_type(metadata_store_pb2.ContextType(name="node"))
    [ctx] = store.put_contexts([metadata_store_pb2.Context(type_id=node_type, name="p.Trainer")])
    running = metadata_store_pb2.Execution(type_id=exec_type,
                                           last_known_state=metadata_store_pb2.Execution.RUNNING)
    [eid] = store.put_executions([running])
    store.put_attributions_and_associations(
        [], [metadata_store_pb2.Association(context_id=ctx, execution_id=eid)])
    monitor = ProgressMonitor(path, out=open(tmp_path / "p.txt", "w"))
    monitor.poll(run_metadata.open_readonly(path))
    assert monitor.executions()[0].seconds is None  # still running: no time yet
    time.sleep(0.4)
    [done] = store.get_executions_by_id([eid])
    done.last_known_state = metadata_store_pb2.Execution.COMPLETE
    store.put_executions([done])
    monitor.poll(run_metadata.open_readonly(path))
    [execution] = monitor.executions()
    assert 0.35 <= execution.seconds < 5.0
    rows = profile_rows(monitor.executions(), wall_s=2 * execution.seconds)
    assert rows == [{"component": "Trainer", "state": "finished",
                     "seconds": round(execution.seconds, 1), "share": 0.5}]
    table = format_profile(rows, 2 * execution.seconds)
    assert "Trainer" in table and f"{execution.seconds:.1f}" in table


def test_profile_is_longest_first_and_leaves_out_running_executions():
    execs = [run_metadata.NodeExecution(1, "A", 3, 2.0), run_metadata.NodeExecution(2, "B", 5, 0.1),
             run_metadata.NodeExecution(3, "C", 3, 6.0), run_metadata.NodeExecution(4, "D", 2)]
    rows = profile_rows(execs, wall_s=10.0)
    assert [(r["component"], r["share"]) for r in rows] == [("C", 0.6), ("A", 0.2), ("B", 0.01)]
    table = format_profile(rows, 10.0)  # 10 s of wall time, 8.1 s inside components
    assert re.search(r"\(between components\)\s+1\.9\n", table), table
    assert re.search(r"C\s+finished\s+6\.0\s+60\.0%", table), table


@pytest.mark.parametrize("content, cause", [(b"not a database" * 100, "file is not a database"),
                                            (b"", "the file is empty")])
def test_unreadable_store_is_named_not_no_run(tmp_path, content, cause):
    path = tmp_path / "metadata.sqlite"
    path.write_bytes(content)
    with pytest.raises(run_metadata.MetadataReadError, match=rf"{path}.*{cause}"):
        run_metadata.artifacts_by_type(str(path), "limaml.MetaEmbeddings")
    # the serving stack used to answer [] ("MEG never ran") / "no EmbeddingJoin examples"
    with pytest.raises(StackError, match=rf"cannot read ML Metadata store {path}.*{cause}"):
        local_stack.embedding_artifacts(str(path))
    with pytest.raises(StackError, match=rf"cannot read ML Metadata store {path}.*{cause}"):
        local_stack.eval_examples_uri(str(path))


def test_locked_store_is_retried_then_named(tmp_path):
    calls = []

    def read():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("Error when executing query: database is locked")
        return "read"

    assert run_metadata.with_retries("m.sqlite", read, attempts=5, wait_s=0.001) == "read"
    assert len(calls) == 3

    def locked():
        raise RuntimeError("Error when executing query: database is locked")

    with pytest.raises(run_metadata.MetadataReadError,
                       match=r"m.sqlite: RuntimeError: .*database is locked; another process .* holds "
                             r"the store locked; wait for it to finish and retry"):
        run_metadata.with_retries("m.sqlite", locked, attempts=2, wait_s=0.001)


def test_missing_store_says_what_to_run(tmp_path):
    with pytest.raises(run_metadata.MetadataReadError, match=r"no ML Metadata store at .*limaml run --output"):
        run_metadata.open_readonly(str(tmp_path / "metadata.sqlite"))


def test_profile_write_failure_is_logged_not_raised(tmp_path, caplog):
    from pipeline import local_runner

    class Seen:
        def wall_seconds(self):
            return 2.0

        def executions(self):
            return [run_metadata.NodeExecution(1, "Trainer", 3, 1.5)]

    assert local_runner.write_profile(Seen(), str(tmp_path / "profile.json"))
    assert json.load(open(tmp_path / "profile.json"))["components"][0]["seconds"] == 1.5
    missing = str(tmp_path / "no-such-folder" / "profile.json")
    assert not local_runner.write_profile(Seen(), missing)  # no exception masks the run's own
    assert "component times not written to" in caplog.text
