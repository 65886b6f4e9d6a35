"""Component progress of a local run, read from ML Metadata while the pipeline runs.

TFX's own progress lines go through absl logging, which components reconfigure mid-run; the
metadata store is the record of what started and finished, so a background thread polls it
(through :mod:`pipeline.run_metadata`, read-only).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

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
        self._this_run: Dict[int, run_metadata.NodeExecution] = {}
        self._start = time.time()

    def _store(self) -> Any:
        return run_metadata.open_readonly(self._path)

    def poll(self, store: Any) -> None:
        """Prints one line per execution whose state changed since the last poll."""
        for execution in run_metadata.node_executions(self._path, store):
            if self._seen.get(execution.id) == execution.state:
                continue
            self._seen[execution.id] = execution.state
            self._this_run[execution.id] = execution
            took = "" if execution.seconds is None else f" ({execution.seconds:.1f} s)"
            print(f"[run {time.time() - self._start:5.0f}s] {execution.node}: "
                  f"{execution.state_name}{took}", file=self._out, flush=True)

    def executions(self) -> List[run_metadata.NodeExecution]:
        """This run's executions (not the store's earlier ones) in their last seen state."""
        return [self._this_run[k] for k in sorted(self._this_run)]

    def wall_seconds(self) -> float:
        """Seconds since the monitor was created."""
        return time.time() - self._start

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


def profile_rows(executions: Sequence[run_metadata.NodeExecution], wall_s: float
                 ) -> List[Dict[str, Any]]:
    """Per-component wall time of a run, longest first.

    Args:
        executions: the run's executions (:meth:`ProgressMonitor.executions`).
        wall_s: the run's wall time.

    Returns:
        ``[{"component", "state", "seconds", "share"}]``; ``share`` is ``seconds / wall_s``
        (components run one at a time locally, so the shares add up to at most 1); executions
        still running (no time) are left out.
    """
    rows = [{"component": e.node, "state": e.state_name, "seconds": round(e.seconds, 1),
             "share": round(e.seconds / wall_s, 3) if wall_s > 0 else 0.0}
            for e in executions if e.seconds is not None]
    return sorted(rows, key=lambda r: -r["seconds"])


def format_profile(rows: Sequence[Dict[str, Any]], wall_s: float) -> str:
    """The profile as a console table, with the run's wall time and the time outside components."""
    lines = [f"{'component':<28} {'state':<9} {'seconds':>8} {'share':>6}"]
    lines += [f"{r['component']:<28} {r['state']:<9} {r['seconds']:>8.1f} {r['share']:>6.1%}"
              for r in rows]
    inside = sum(r["seconds"] for r in rows)
    lines.append(f"{'(between components)':<28} {'':<9} {max(0.0, wall_s - inside):>8.1f}")
    lines.append(f"{'run wall time':<28} {'':<9} {wall_s:>8.1f}")
    return "\n".join(lines)
