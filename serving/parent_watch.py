"""A server process that stops when the process that started it is gone.

A model server started as a child (``serving.model_server.launch``) outlived its parent when
the parent was killed without stopping it (SIGKILL, an OOM kill, a crash before ``stop()``): the
orphan kept its port, its model in memory and its threads until someone found it. With
``--parent_pid`` the stand-in watches for that: once its parent process is gone (it is
re-parented, so ``os.getppid()`` changes) it stops as on SIGTERM. Polling the parent id works
whichever thread started the child (``prctl(PR_SET_PDEATHSIG)`` fires when the starting *thread*
exits) and needs no code between ``fork`` and ``exec``.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable, Optional

log = logging.getLogger(__name__)


def parent_is_gone(parent_pid: int, getppid: Callable[[], int] = os.getppid) -> bool:
    """Whether this process no longer has ``parent_pid`` as its parent."""
    return getppid() != parent_pid


def watch_parent(parent_pid: int, on_gone: Optional[Callable[[], None]] = None,
                 interval_s: float = 0.5, getppid: Callable[[], int] = os.getppid,
                 stop: Optional[threading.Event] = None) -> threading.Thread:
    """Calls ``on_gone`` once, from a daemon thread, when the parent ``parent_pid`` is gone.

    Args:
        parent_pid: the parent's process id (the launcher passes its own).
        on_gone: what to do then; default: send this process SIGTERM (a server's CLI then
            stops the way it does on ``kill``).
        interval_s: seconds between checks.
        getppid: the parent id now (tests pass their own).
        stop: set it to end the watch without calling ``on_gone``.

    Returns:
        The started thread.

    Raises:
        ValueError: ``parent_pid`` < 1 or ``interval_s`` <= 0.
    """
    if parent_pid < 1 or interval_s <= 0:
        raise ValueError(f"parent_pid={parent_pid}, interval_s={interval_s}: give a process id "
                         ">= 1 and a positive interval")
    stop = stop or threading.Event()

    def terminate() -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def run() -> None:
        while not stop.wait(interval_s):
            if parent_is_gone(parent_pid, getppid):
                log.warning("parent process %d is gone; stopping", parent_pid)
                (on_gone or terminate)()
                return

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread


__all__ = ["parent_is_gone", "watch_parent"]
