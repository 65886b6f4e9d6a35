"""Parquet meta-embedding store: cleanup of crashed writes and retention of versions.

* Crashed writes: each write first removes temp/trash folders of crashed writers
  (:meth:`RetentionMixin.remove_stale_temp`): only names this store makes, only folders older
  than ``stale_temp_s`` and only when no live writer holds their lock.
* Retention: after each commit, versions beyond ``keep_versions`` are retired
  (:meth:`RetentionMixin.retire_versions`) by what is served and blessed (policy in
  :mod:`embeddings.retention`; pins in ``_serving.json``, written by
  :meth:`RetentionMixin.mark_pushed`), never the serving version, its predecessor or the newest
  commit. A retired version is renamed to a trash folder (hidden at once), then deleted.

:class:`RetentionMixin` is one part of :class:`embeddings.parquet_store.ParquetEmbeddingStore`.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, List, Optional

from embeddings.atomic_files import _flocked, _lock_is_free, _replace_file
from embeddings.parquet_layout import (
    _COMMIT_LOCK,
    _OWN_TEMP_RE,
    _PINS,
    _PINS_LOCK,
    _TRASH_PREFIX,
    _WRITER_LOCK,
)
from embeddings.record import validate_model_version
from embeddings.retention import ServingPins, versions_to_retire


class RetentionMixin:
    """Removes crashed writers' folders and retires old versions by the serving pins."""

    root: Path
    fsync: bool
    keep_versions: Optional[int]
    stale_temp_s: float
    _loaded: "OrderedDict[str, Any]"
    _lock: threading.Lock

    def remove_stale_temp(self, older_than_s: Optional[float] = None) -> List[str]:
        """Deletes temp/trash folders left by crashed writers (called by every write).

        Only folders named as this store names them (``.tmp-model_version=<v>-<32 hex>``,
        ``.trash-...``) directly under ``root``, not symlinks, last modified at least
        ``older_than_s`` ago, and whose writer's lock is free (a live writer keeps its folder).

        Args:
            older_than_s: least age in seconds; default ``stale_temp_s``.

        Returns:
            The names removed.
        """
        age = self.stale_temp_s if older_than_s is None else float(older_than_s)
        removed: List[str] = []
        if not self.root.exists():
            return removed
        now = time.time()
        for p in self.root.iterdir():
            if not _OWN_TEMP_RE.match(p.name):
                continue
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            if not os.path.isdir(p) or p.is_symlink() or now - st.st_mtime < age:
                continue
            if not _lock_is_free(p / _WRITER_LOCK):
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        return sorted(removed)

    def delete_version(self, model_version: str) -> bool:
        """Removes a committed version (atomically hidden first). Returns whether it existed."""
        target = self.version_dir(model_version)
        if not target.exists():
            return False
        trash = self.root / f"{_TRASH_PREFIX}{target.name}-{uuid.uuid4().hex}"
        try:
            with _flocked(target / _COMMIT_LOCK):  # not in the middle of a commit of it
                os.rename(target, trash)
        except FileNotFoundError:
            return False  # deleted meanwhile
        shutil.rmtree(trash, ignore_errors=True)
        with self._lock:
            self._loaded.pop(model_version, None)
        return True

    def serving_pins(self) -> ServingPins:
        """The serving pins (what was pushed), empty before any :meth:`mark_pushed`."""
        try:
            return ServingPins.from_json((self.root / _PINS).read_text())
        except FileNotFoundError:
            return ServingPins()

    def mark_pushed(self, model_version: str) -> ServingPins:
        """Records that ``model_version`` was pushed (blessed): retention never collects it.

        The version served before becomes the rollback target (also kept). Call it when the
        model is pushed (the BlockPusher does).

        Returns:
            The new pins.
        """
        validate_model_version(model_version)
        self.root.mkdir(parents=True, exist_ok=True)
        with _flocked(self.root / _PINS_LOCK):
            pins = self.serving_pins().pushed(model_version, time.time_ns() // 1000)
            _replace_file(self.root / _PINS, pins.to_json(), self.fsync)
        return pins

    def retire_versions(self, keep: Optional[int] = None) -> List[str]:
        """Retires committed versions beyond ``keep`` (default ``keep_versions``) by the pins.

        Never the serving version, the one before it, or the newest commit; unblessed versions
        go first (see :mod:`embeddings.retention`).

        Returns:
            The retired versions.
        """
        keep = self.keep_versions if keep is None else int(keep)
        if keep is None:
            return []
        old = versions_to_retire(self.committed_versions(), self.serving_pins(), keep)
        for version in old:
            self.delete_version(version)
        return old
