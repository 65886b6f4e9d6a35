"""Quiet by default: library output to a log file, our progress and results to the terminal.

The ``limaml`` commands print progress lines and results only. Everything the libraries write to
standard error (absl and Python warnings, TensorFlow's C++ log lines such as the cuFFT/cuDNN
factory messages, TFT/TFMA deprecations, Beam worker output, subprocesses) goes to a log file:
:class:`LibraryLog` points file descriptor 2 at the file, which catches C++ and child-process
output that no Python logging setting reaches. Our own lines go to :func:`console`, the terminal's
standard error as it was before the redirection. ``limaml --verbose`` skips the redirection, so
library output shows live (and no log file is written).

Example::

    log = LibraryLog("runs/main/logs/run.log")
    log.start()
    try:
        print("[run] progress", file=console())
    finally:
        log.stop()
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

LOG_SUBDIR = "logs"

_console: Optional[TextIO] = None


def console() -> TextIO:
    """Where progress lines and errors go: the terminal, also while a :class:`LibraryLog` runs."""
    return _console if _console is not None else sys.stderr


def log_path(folder: str, command: str) -> str:
    """``<folder>/logs/<command>-<UTC time>.log`` (the folder is not created here)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return os.path.join(folder, LOG_SUBDIR, f"{command}-{stamp}-{os.getpid()}.log")


def _terminal_copy(stream: TextIO) -> TextIO:
    """The stream for the terminal, given the current ``sys.stderr``.

    When ``sys.stderr`` writes to file descriptor 2, the terminal stream is a new file object on
    a duplicate of fd 2 (it keeps pointing at the terminal after fd 2 is redirected). When it
    does not (a test harness capturing it), it stays the terminal stream as it is.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    if fd != 2:
        return stream
    stream.flush()
    copy = os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                     errors="backslashreplace")
    return copy


class LibraryLog:
    """Redirects file descriptor 2 (standard error) to a log file between ``start`` and ``stop``.

    Args:
        path: the log file (its folder is created; appended to if it exists).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._saved_fd: Optional[int] = None
        self._previous_console: Optional[TextIO] = None

    def start(self) -> "LibraryLog":
        """Starts sending standard error to the log; :func:`console` keeps the terminal.

        Raises:
            OSError: the log file cannot be created (nothing redirected then).
        """
        global _console
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._previous_console = _console
        _console = _terminal_copy(sys.stderr)
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def stop(self) -> None:
        """Points standard error back at the terminal (idempotent)."""
        global _console
        if self._saved_fd is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # a closed stderr: nothing buffered to keep
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self._saved_fd = None
        if _console is not None and _console is not self._previous_console and _console is not sys.stderr:
            try:
                _console.flush()
                _console.close()
            except (OSError, ValueError):
                pass  # already closed
        _console = self._previous_console

    def line_count(self) -> int:
        """Lines in the log file (0 when it does not exist)."""
        try:
            with open(self.path, "rb") as fh:
                return sum(1 for _ in fh)
        except FileNotFoundError:
            return 0

    def __enter__(self) -> "LibraryLog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
