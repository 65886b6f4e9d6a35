"""Run a writer script in a child process and SIGKILL it once it has written half-way."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]


def kill_at_marker(script: str, args: Sequence[str], marker: Path, timeout_s: float = 60.0) -> None:
    """Runs ``python -c script *args`` from the repository root, waits until the script creates
    ``marker`` (its half-way mark), then kills it with SIGKILL (no cleanup runs).

    Raises:
        AssertionError: the writer exited before the mark, or did not reach it in ``timeout_s``.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", script, *map(str, args)],
                            cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while not marker.exists():
            assert proc.poll() is None, "writer exited before the half-way mark"
            assert time.monotonic() < deadline, f"writer did not reach {marker} in {timeout_s} s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
