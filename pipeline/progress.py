"""Component progress of a local run, read from ML Metadata while the pipeline runs.

TFX's own progress lines go through absl logging, which components reconfigure mid-run; the
metadata store is the record of what started and finished, so a background thread polls it.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Dict, Optional, TextIO

_STATES = {1: "new", 2: "running", 3: "finished", 4: "FAILED", 5: "cached", 6: "cancelled"}


class ProgressMonitor(threading.Thread):
    """Prints ``[run  12s] Transform: running`` lines as executions appear and change state.

    Args:
        metadata_path: the run's SQLite ML Metadata file.
        interval_s: polling period.
        out: where to print.
    """

    def __init__(self, metadata_path: str, interval_s: float = 2.0, out: TextIO = sys.stderr) -> None:
        super().__init__(daemon=True, name="limaml-progress")
        self._path, self._interval, self._out = metadata_path, interval_s, out
        self._stop_event = threading.Event()
        self._seen: Dict[int, int] = {}
        self._start = time.time()

    def _store(self):
        from ml_metadata.metadata_store import metadata_store
        from ml_metadata.proto import metadata_store_pb2

        cfg = metadata_store_pb2.ConnectionConfig()
        cfg.sqlite.filename_uri = self._path
        cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
        return metadata_store.MetadataStore(cfg)

    def poll(self, store) -> None:
        """Prints one line per execution whose state changed since the last poll."""
        node_type: Optional[int] = None
        for ctx_type in store.get_context_types():
            if ctx_type.name == "node":
                node_type = ctx_type.id
        for execution in store.get_executions():
            state = int(execution.last_known_state)
            if self._seen.get(execution.id) == state:
                continue
            self._seen[execution.id] = state
            nodes = [c.name.split(".", 1)[-1] for c in store.get_contexts_by_execution(execution.id)
                     if c.type_id == node_type]
            name = nodes[0] if nodes else execution.type
            print(f"[run {time.time() - self._start:5.0f}s] {name}: {_STATES.get(state, state)}",
                  file=self._out, flush=True)

    def prime(self) -> None:
        """Marks the executions of earlier runs (already in the store) as seen, silently."""
        import os

        if os.path.exists(self._path):
            try:
                for execution in self._store().get_executions():
                    self._seen[execution.id] = int(execution.last_known_state)
            except Exception:  # noqa: BLE001 - an empty or new store
                pass

    def run(self) -> None:
        store = None
        while not self._stop_event.is_set():
            try:
                store = store or self._store()
                self.poll(store)
            except Exception:  # noqa: BLE001 - the store may not exist yet, or be mid-write
                store = None
            self._stop_event.wait(self._interval)

    def stop(self) -> None:
        """Final poll, then stop."""
        self._stop_event.set()
        self.join(timeout=10)
        try:
            self.poll(self._store())
        except Exception:  # noqa: BLE001
            pass
