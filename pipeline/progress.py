"""Component progress of a local run, read from ML Metadata while the pipeline runs.

TFX's own progress lines go through absl logging, which components reconfigure mid-run; the
metadata store is the record of what started and finished, so a background thread polls it
(through :mod:`pipeline.run_metadata`, read-only).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, Optional, TextIO

from pipeline import run_metadata


class ProgressMonitor(threading.Thread):
    """Prints ``[run  12s] Transform: running`` lines as executions appear and change state.

    Args:
        metadata_path: the run's SQLite ML Metadata file.
        interval_s: polling period.
        out: where to print (default: the console, :func:`limaml.console.console`).
    """

    def __init__(self, metadata_path: str, interval_s: float = 2.0, out: Optional[TextIO] = None) -> None:
        super().__init__(daemon=True, name="limaml-progress")
        if out is None:
            from limaml.console import console

            out = console()
        self._path, self._interval, self._out = metadata_path, interval_s, out
        self._stop_event = threading.Event()
        self._seen: Dict[int, int] = {}
        self._start = time.time()

    def _store(self) -> Any:
        return run_metadata.open_readonly(self._path)

    def poll(self, store: Any) -> None:
        """Prints one line per execution whose state changed since the last poll."""
        for execution in run_metadata.node_executions(self._path, store):
            if self._seen.get(execution.id) == execution.state:
                continue
            self._seen[execution.id] = execution.state
            print(f"[run {time.time() - self._start:5.0f}s] {execution.node}: {execution.state_name}",
                  file=self._out, flush=True)

    def prime(self) -> None:
        """Marks the executions of earlier runs (already in the store) as seen, silently."""
        if os.path.exists(self._path):
            try:
                for execution in run_metadata.node_executions(self._path):
                    self._seen[execution.id] = execution.state
            except run_metadata.MetadataReadError:
                pass  # an empty store (a run that stopped before writing): nothing seen yet

    def run(self) -> None:
        store = None
        while not self._stop_event.is_set():
            try:
                store = store or self._store()
                self.poll(store)
            except run_metadata.MetadataReadError:
                store = None  # not created yet, or mid-write: next poll
            self._stop_event.wait(self._interval)

    def stop(self) -> None:
        """Final poll, then stop."""
        self._stop_event.set()
        self.join(timeout=10)
        try:
            self.poll(self._store())
        except run_metadata.MetadataReadError:
            pass  # the run never created its store: nothing to report
