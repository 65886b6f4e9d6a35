"""Blocking until the process is asked to stop (SIGINT / SIGTERM): the servers' CLIs."""
from __future__ import annotations

import signal
import threading


def wait_for_stop_signal() -> None:
    """Returns once SIGINT or SIGTERM arrives (installs handlers for both; main thread only)."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
