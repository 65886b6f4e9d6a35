"""Parquet meta-embedding store: committed versions and batched lookups.

A version is read through one manifest (``_metadata.json``): its identity (inode, mtime) and
content come from one open file, then only files of the commit it names are read. If that commit
folder is collected meanwhile (a newer commit replaced it), the manifest is read again, so a
reader never mixes two commits. Loaded versions stay in memory (LRU of ``max_loaded_versions``)
until their manifest changes; lookups are vectorized index joins.

:class:`ReadMixin` is one part of :class:`embeddings.parquet_store.ParquetEmbeddingStore`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embeddings.parquet_codec import arrow_schema, embedding_column_to_numpy
from embeddings.parquet_layout import _METADATA, _PREFIX, _READ_ATTEMPTS
from embeddings.record import (
    COLD_START_USER,
    EmbeddingBatch,
    StoreLookup,
    VersionNotCommittedError,
    as_user_id_array,
)


@dataclasses.dataclass
class _LoadedVersion:
    key: Tuple[int, int]  # (st_ino, st_mtime_ns) of the manifest it was loaded through
    index: pd.Index
    embeddings: np.ndarray  # float32 [N, E]
    support_size: np.ndarray
    last_interaction_ts: np.ndarray
    generated_at: np.ndarray


class ReadMixin:
    """Lists committed versions and reads them (lookups, metadata, whole versions)."""

    root: Path
    max_loaded_versions: int
    _loaded: "OrderedDict[str, _LoadedVersion]"
    _lock: threading.Lock

    def committed_versions(self) -> List[str]:
        """Committed versions, oldest first commit first (temp directories are never listed).

        A rerun of a version does not move it in this order.
        """
        if not self.root.exists():
            return []
        found = []
        for p in self.root.iterdir():
            if p.name.startswith(_PREFIX) and (p / _METADATA).is_file():
                try:
                    meta = json.loads((p / _METADATA).read_text())
                    first = meta.get("first_committed_at_ns", meta["committed_at_ns"])
                    found.append((int(first), p.name[len(_PREFIX):]))
                except (OSError, ValueError, KeyError):
                    continue
        return [v for _, v in sorted(found)]

    list_versions = committed_versions

    def latest_committed_version(self) -> Optional[str]:
        """The version first committed most recently, or None if there is none."""
        versions = self.committed_versions()
        return versions[-1] if versions else None

    def _not_committed(self, model_version: str) -> VersionNotCommittedError:
        return VersionNotCommittedError(
            f"model version {model_version!r} is not committed in {self.root} "
            f"(committed: {self.committed_versions()}); it was never written, is being written, "
            "or was retired: run meta-embedding generation for it or ask for a committed version")

    def version_metadata(self, model_version: str) -> Dict:
        """The manifest (``_metadata.json``) of a committed version.

        Raises:
            VersionNotCommittedError: the version is not committed under ``root``.
        """
        path = self.version_dir(model_version) / _METADATA
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise self._not_committed(model_version) from None

    def _read_manifest(self, model_version: str) -> Tuple[Tuple[int, int], Dict]:
        """(identity, content) of the manifest from one open file (both of the same commit)."""
        path = self.version_dir(model_version) / _METADATA
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                raw = fh.read()
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_committed(model_version) from None
        return (st.st_ino, st.st_mtime_ns), json.loads(raw.decode("utf-8"))

    def _load(self, model_version: str) -> _LoadedVersion:
        """The version read through one manifest (re-read if its commit is collected under us)."""
        vdir = self.version_dir(model_version)
        for _ in range(_READ_ATTEMPTS):
            key, meta = self._read_manifest(model_version)
            with self._lock:
                cached = self._loaded.get(model_version)
                if cached is not None and cached.key == key:
                    self._loaded.move_to_end(model_version)
                    return cached
            dim = int(meta["embedding_dim"])
            try:
                tables = [pq.read_table(str(vdir / f), columns=[
                    "user_id", "embedding", "support_size", "last_interaction_ts", "generated_at"])
                    for f in meta["files"]]
            except FileNotFoundError:
                continue  # a newer commit replaced this one and its folder was collected
            tbl = pa.concat_tables(tables) if tables else arrow_schema(dim).empty_table()
            loaded = _LoadedVersion(
                key=key,
                index=pd.Index(tbl.column("user_id").to_numpy(), dtype=object),
                embeddings=embedding_column_to_numpy(tbl.column("embedding"), dim),
                support_size=tbl.column("support_size").to_numpy(),
                last_interaction_ts=tbl.column("last_interaction_ts").to_numpy(),
                generated_at=tbl.column("generated_at").to_numpy(),
            )
            with self._lock:
                self._loaded[model_version] = loaded
                self._loaded.move_to_end(model_version)
                while len(self._loaded) > self.max_loaded_versions:
                    self._loaded.popitem(last=False)
            return loaded
        raise RuntimeError(
            f"model version {model_version!r} in {self.root} was rewritten {_READ_ATTEMPTS} times "
            "while it was being read; retry the lookup, or rewrite the version less often")

    def embedding_dim(self, model_version: str) -> int:
        """E of a committed version."""
        return int(self.version_metadata(model_version)["embedding_dim"])

    def lookup(self, user_ids: Union[Sequence[str], np.ndarray], model_version: str,
               timeout_s: Optional[float] = None) -> StoreLookup:
        """Batched lookup of many users in one version (vectorized index join).

        The version is loaded into memory on first use (and reloaded when rewritten).

        Args:
            user_ids: [N] str; duplicates allowed.
            model_version: a committed version.
            timeout_s: unused (local files); accepted for interface parity with Bigtable.

        Returns:
            :class:`StoreLookup` with ``embeddings`` float32 [N, E] (zeros where not found) and
            ``found`` bool [N].

        Raises:
            VersionNotCommittedError: the version is not committed.
        """
        del timeout_s
        ids = as_user_id_array(user_ids)
        loaded = self._load(model_version)
        pos = loaded.index.get_indexer(ids) if ids.size else np.zeros(0, dtype=np.intp)
        found = pos >= 0
        out = np.zeros((ids.shape[0], loaded.embeddings.shape[1]), dtype=np.float32)
        out[found] = loaded.embeddings[pos[found]]
        return StoreLookup(embeddings=out, found=found)

    def cold_start_default(self, model_version: str) -> Optional[np.ndarray]:
        """The cold-start embedding [E] of a version, or None if the version has none."""
        res = self.lookup([COLD_START_USER], model_version)
        return res.embeddings[0] if res.found[0] else None

    def read_version(self, model_version: str) -> EmbeddingBatch:
        """The whole version as one batch (``generated_at`` = newest row's), in file order."""
        loaded = self._load(model_version)
        return EmbeddingBatch(
            user_ids=np.asarray(loaded.index, dtype=object),
            embeddings=loaded.embeddings.copy(),
            support_size=loaded.support_size.copy(),
            last_interaction_ts=loaded.last_interaction_ts.copy(),
            model_version=model_version,
            generated_at=int(loaded.generated_at.max()) if loaded.generated_at.size else 0,
        )
