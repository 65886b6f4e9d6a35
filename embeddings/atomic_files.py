"""Atomic file replacement and ``flock`` helpers of the Parquet store (POSIX).

* :func:`_replace_file`: write a temp file in the same folder, then ``os.replace`` (optionally
  fsynced, file and folder), so readers see the old or the new content, never a mix.
* :func:`_flocked` / :func:`_lock_is_free`: hold an exclusive ``flock``, or test whether anybody
  holds one (a live writer keeps its temp folder; commits of a version are serialized).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from pathlib import Path
from typing import Iterator

from embeddings.parquet_layout import _MANIFEST_TMP


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_is_free(path: Path) -> bool:
    """True when nobody holds an flock on ``path`` (missing file: True).

    On a file system without flock support the answer is False (cannot tell: keep the folder).
    """
    try:
        fd = os.open(str(path), os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.ENOLCK):
            raise
        return False
    finally:
        os.close(fd)


def _replace_file(path: Path, text: str, fsync: bool) -> None:
    """Atomically replaces ``path`` with ``text`` (temp file in the same folder + os.replace)."""
    tmp = path.parent / f"{_MANIFEST_TMP}{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)
