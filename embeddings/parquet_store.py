"""Parquet meta-embedding store: the always-on store (DESIGN.md sections 1, 3, 4).

Layout under ``root``::

    root/
      _serving.json                     # serving pins (embeddings/retention.py), atomically replaced
      model_version=<v>/
        _metadata.json                  # the version's manifest = its commit pointer:
                                        #   embedding_dim, num_users, committed_at_ns, commit,
                                        #   files (paths relative to this folder)
        commit-<id>/                    # immutable once a manifest names it
          part-00000.parquet            # columns: user_id, embedding, model_version,
          part-00001.parquet            #   generated_at, support_size, last_interaction_ts
        .commit.lock                    # serializes commits of this version (flock)
      .tmp-model_version=<v>-<id>/      # a write in progress (its writer holds an flock on
                                        #   .writer.lock inside) or one that crashed
      .trash-model_version=<v>-<id>/    # a retired version being deleted

Commit: a write streams into its own temp folder, renames it to ``model_version=<v>/commit-<id>``
and then atomically replaces the manifest (``os.replace``) to name it. Readers read the manifest
once and then only files of the immutable commit folder it names, so they never see a mix of two
commits; a crash at any point leaves the previously committed copy readable. The commit folder
replaced by a rewrite is kept until the next rewrite (readers still on it finish); one that is
collected under a reader makes it re-read the manifest (never mix). Legacy stores whose files sit
directly in ``model_version=<v>/`` (manifest paths without a folder) stay readable and are
migrated by their next write.

Crashed writes: each write first removes temp/trash folders of crashed writers
(:meth:`ParquetEmbeddingStore.remove_stale_temp`): only names this store makes, only folders
older than ``stale_temp_s`` and only when no live writer holds their lock.

Retention: after each commit, versions beyond ``keep_versions`` are retired by what is served and
blessed (:mod:`embeddings.retention`; pins written by :meth:`ParquetEmbeddingStore.mark_pushed`),
never the serving version, its predecessor or the newest commit.

The ``embedding`` column is ``fixed_size_list<float32>[E]``; values are stored bit-exactly.
``model_version`` is also a column (dictionary-encoded) so a file is self-describing; read the
files through the manifest (as this module does), not through Hive partition discovery.

Modules (one concept each; this one composes them): :mod:`embeddings.parquet_layout` (file and
folder names), :mod:`embeddings.parquet_codec` (Arrow schema, batch <-> table),
:mod:`embeddings.atomic_files` (atomic replace, flock), :mod:`embeddings.parquet_write` (write
and commit), :mod:`embeddings.parquet_gc` (crashed writes, retention), :mod:`embeddings.parquet_read`
(versions and lookups); :class:`WriteSummary` is :mod:`embeddings.write_summary`'s.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Union

from embeddings.parquet_codec import arrow_schema as arrow_schema
from embeddings.parquet_codec import batch_to_table as batch_to_table
from embeddings.parquet_codec import embedding_column_to_numpy as embedding_column_to_numpy
from embeddings.parquet_gc import RetentionMixin
from embeddings.parquet_layout import _PREFIX
from embeddings.parquet_read import ReadMixin, _LoadedVersion
from embeddings.parquet_write import WriteMixin
from embeddings.record import validate_model_version
from embeddings.write_summary import WriteSummary as WriteSummary


class ParquetEmbeddingStore(WriteMixin, RetentionMixin, ReadMixin):
    """Writes and reads meta embeddings as Parquet, one directory per model version.

    Args:
        root: base directory (created on first write).
        rows_per_file: a new ``part-*.parquet`` file is started after this many rows.
        row_group_size: Parquet row-group size.
        max_loaded_versions: versions kept in memory for lookups (LRU).
        fsync: flush files and directories to disk before publishing (durability on power loss).
        keep_versions: committed versions kept after each commit (retention by serving pins,
            see :mod:`embeddings.retention`); None keeps every version.
        stale_temp_s: a temp folder of a crashed writer is removed by the next write once it is
            this old (and its writer's lock is free).
    """

    def __init__(self, root: Union[str, os.PathLike], rows_per_file: int = 1_000_000,
                 row_group_size: int = 65_536, max_loaded_versions: int = 2,
                 fsync: bool = True, keep_versions: Optional[int] = 3,
                 stale_temp_s: float = 900.0) -> None:
        if rows_per_file < 1 or row_group_size < 1 or max_loaded_versions < 1:
            raise ValueError(
                f"rows_per_file ({rows_per_file}), row_group_size ({row_group_size}) and "
                f"max_loaded_versions ({max_loaded_versions}) must be >= 1")
        if keep_versions is not None and keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1 or None (keep all), got {keep_versions}")
        if stale_temp_s < 0:
            raise ValueError(f"stale_temp_s must be >= 0, got {stale_temp_s}")
        self.root = Path(root)
        self.rows_per_file = int(rows_per_file)
        self.row_group_size = int(row_group_size)
        self.max_loaded_versions = int(max_loaded_versions)
        self.fsync = fsync
        self.keep_versions = None if keep_versions is None else int(keep_versions)
        self.stale_temp_s = float(stale_temp_s)
        self._loaded: "OrderedDict[str, _LoadedVersion]" = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ paths
    def version_dir(self, model_version: str) -> Path:
        """Directory of a version (may not exist); its manifest's ``files`` are relative to it."""
        return self.root / f"{_PREFIX}{validate_model_version(model_version)}"

    def __repr__(self) -> str:
        return f"ParquetEmbeddingStore({str(self.root)!r})"

