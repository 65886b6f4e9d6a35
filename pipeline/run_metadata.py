"""Reading a local run's ML Metadata (the SQLite store ``<run>/metadata.sqlite``).

One place for what the main job (the Report artifact to publish), the progress monitor (which
component runs) and the local serving stack (meta-embedding and evaluation-example artifacts)
read from a run's store. The store is opened read-only, so readers never create or migrate it.

Errors are named, never turned into "nothing there": a store that does not exist, is not an
ML Metadata database, or stays locked by a writer raises :class:`MetadataReadError` with the
path, the cause and what to do. A lock (another process writing) is retried briefly first.
An artifact type that no component registered yet is not an error: no artifacts.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, List, Optional, TypeVar

METADATA_FILE = "metadata.sqlite"
NODE_CONTEXT_TYPE = "node"  # TFX's context type of one pipeline node (component)

# ML Metadata execution states (metadata_store_pb2.Execution.State) as progress words.
EXECUTION_STATES = {1: "new", 2: "running", 3: "finished", 4: "FAILED", 5: "cached", 6: "cancelled"}
_DONE_STATES = (3, 4, 5, 6)

_LOCKED_MARKERS = ("database is locked", "database table is locked", "busy")
T = TypeVar("T")


class MetadataReadError(RuntimeError):
    """A run's ML Metadata store exists (or should) but cannot be read; the message says why."""


@dataclasses.dataclass(frozen=True)
class NodeExecution:
    """One execution of a pipeline node, as the progress monitor reports it.

    Attributes:
        id: the execution's ML Metadata id.
        node: the component id (``Transform``, ``LimamlTrainer``, ...), or the execution type
            when the node context is missing.
        state: ML Metadata execution state number (see :data:`EXECUTION_STATES`).
        seconds: wall time from registration to the last state change (the time the component
            ran, for a finished, failed or cached execution); None while it runs.
    """

    id: int
    node: str
    state: int
    seconds: Optional[float] = None

    @property
    def state_name(self) -> str:
        """``running``, ``finished``, ``cached``, ``FAILED``, ...; the number when unknown."""
        return EXECUTION_STATES.get(self.state, str(self.state))


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _LOCKED_MARKERS)


def _explain(metadata_path: str, exc: BaseException) -> MetadataReadError:
    cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    if _is_locked(exc):
        hint = ("another process (a pipeline run?) holds the store locked; wait for it to finish "
                "and retry")
    elif not os.path.exists(metadata_path):
        hint = "the file does not exist; run the pipeline first: `limaml run --output DIR`"
    elif os.path.getsize(metadata_path) == 0:
        hint = ("the file is empty: a pipeline run is creating it, or it was interrupted before "
                "writing; rerun `limaml run --output DIR`")
    else:
        hint = ("it is not a readable ML Metadata store (damaged, or not written by TFX); rerun "
                "`limaml run` into a new --output folder")
    return MetadataReadError(f"cannot read ML Metadata store {metadata_path}: {cause}; {hint}")


def with_retries(metadata_path: str, read: Callable[[], T], attempts: int = 5,
                 wait_s: float = 0.2) -> T:
    """Calls ``read()``; retries while the store is locked; names any failure.

    Args:
        metadata_path: the store's file (for the message).
        read: the read, e.g. ``lambda: open_readonly(path).get_artifacts_by_type(name)``.
        attempts: tries in all while the error says the database is locked or busy.
        wait_s: first wait between tries (doubled each time).

    Raises:
        MetadataReadError: the read failed (locked through every try, missing, damaged);
            the message names the path, the cause and what to do.
    """
    for attempt in range(attempts):
        try:
            return read()
        except MetadataReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - ml_metadata raises RuntimeError or StatusError subclasses
            if _is_locked(exc) and attempt + 1 < attempts:
                time.sleep(wait_s * (2 ** attempt))
                continue
            raise _explain(metadata_path, exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def open_readonly(metadata_path: str) -> Any:
    """A read-only ``MetadataStore`` on a SQLite file.

    Raises:
        MetadataReadError: no such file (ML Metadata would report only "unable to open").
    """
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.isfile(metadata_path):
        raise MetadataReadError(f"no ML Metadata store at {metadata_path}; run the pipeline first: "
                                "`limaml run --output DIR`")
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return with_retries(metadata_path, lambda: metadata_store.MetadataStore(cfg))


def artifacts_by_type(metadata_path: str, type_name: str, store: Optional[Any] = None) -> List[Any]:
    """Artifacts of ``type_name`` (ML Metadata ``Artifact`` protos), newest (highest id) first.

    Args:
        metadata_path: the run's SQLite store.
        type_name: artifact type, e.g. ``limaml.MetaEmbeddings`` or ``Examples``.
        store: an open store to reuse (default: open ``metadata_path`` read-only).

    Returns:
        The artifacts; empty when no component recorded that type yet.

    Raises:
        MetadataReadError: the store cannot be read (see :func:`with_retries`).
    """
    def read() -> List[Any]:
        return list((store or open_readonly(metadata_path)).get_artifacts_by_type(type_name))

    return sorted(with_retries(metadata_path, read), key=lambda a: a.id, reverse=True)


def latest_artifact_uri(metadata_path: str, type_name: str) -> str:
    """URI of the newest artifact of ``type_name``.

    Raises:
        MetadataReadError: the store cannot be read.
        RuntimeError: the store holds no such artifact (names the type and the store).
    """
    arts = artifacts_by_type(metadata_path, type_name)
    if not arts:
        raise RuntimeError(f"no {type_name} artifact in {metadata_path}; did the pipeline finish?")
    return arts[0].uri


def node_executions(metadata_path: str, store: Optional[Any] = None) -> List[NodeExecution]:
    """Every execution recorded in the store with its node (component) id and state, by id.

    Args:
        metadata_path: the run's SQLite store.
        store: an open store to reuse (default: open ``metadata_path`` read-only).

    Raises:
        MetadataReadError: the store cannot be read.
    """
    def read() -> List[NodeExecution]:
        st = store or open_readonly(metadata_path)
        node_type = next((t.id for t in st.get_context_types() if t.name == NODE_CONTEXT_TYPE), None)
        out = []
        for execution in sorted(st.get_executions(), key=lambda e: e.id):
            nodes = [c.name.split(".", 1)[-1] for c in st.get_contexts_by_execution(execution.id)
                     if c.type_id == node_type]
            state = int(execution.last_known_state)
            seconds = None
            if state in _DONE_STATES:
                seconds = max(0.0, (execution.last_update_time_since_epoch
                                    - execution.create_time_since_epoch) / 1000.0)
            out.append(NodeExecution(execution.id, nodes[0] if nodes else execution.type,
                                     state, seconds))
        return out

    return with_retries(metadata_path, read)
