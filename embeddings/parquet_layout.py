"""Parquet meta-embedding store: the names of its files and folders under ``root``.

The layout (:mod:`embeddings.parquet_store` has the whole design)::

    root/
      _serving.json                     # serving pins, atomically replaced (.serving.lock)
      model_version=<v>/
        _metadata.json                  # the version's manifest = its commit pointer
        commit-<id>/part-NNNNN.parquet  # immutable once a manifest names it
        .commit.lock                    # serializes commits of this version (flock)
      .tmp-model_version=<v>-<id>/      # a write in progress (.writer.lock inside) or crashed
      .trash-model_version=<v>-<id>/    # a retired version being deleted

Only names matched here are ever created or cleaned up by the store.
"""
from __future__ import annotations

import re

_PREFIX = "model_version="
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_METADATA = "_metadata.json"
_PINS = "_serving.json"
_PINS_LOCK = ".serving.lock"
_COMMIT_PREFIX = "commit-"
_COMMIT_LOCK = ".commit.lock"
_WRITER_LOCK = ".writer.lock"
_MANIFEST_TMP = ".manifest-"
_READ_ATTEMPTS = 20
# Folders this store creates at the root for in-progress writes and deletions (nothing else is
# ever cleaned up): .tmp-model_version=<v>-<32 hex> / .trash-model_version=<v>-<32 hex>.
_OWN_TEMP_RE = re.compile(r"^\.(tmp|trash)-model_version=[A-Za-z0-9][A-Za-z0-9._\-]{0,127}-[0-9a-f]{32}$")
_COMMIT_RE = re.compile(r"^commit-[0-9a-f]{32}$")
_LEGACY_PART_RE = re.compile(r"^part-\d{5}\.parquet$")
