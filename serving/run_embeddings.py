"""The meta embeddings of a local pipeline run, as one store, and copying a version between stores.

:class:`RunEmbeddingStore` serves every version that the run's meta-embedding generation committed
(each ``limaml.MetaEmbeddings`` artifact is a Parquet store root), resolving a version to the
newest artifact that has it and rescanning ML Metadata for versions pushed while serving.
:func:`load_version_into` copies one committed version into another store with that store's own
``write`` (e.g. into the Bigtable emulator, with production's commit semantics).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from embeddings.record import StoreLookup, VersionNotCommittedError
from serving.run_folder import embedding_artifacts


class RunEmbeddingStore:
    """The Parquet meta embeddings of a run, each version read from the artifact that has it.

    A model version is resolved to the newest ``limaml.MetaEmbeddings`` artifact whose store
    has committed it; unknown versions are looked up again in ML Metadata (at most every
    ``recheck_s``), so versions pushed while serving are found once MEG committed them.

    Args:
        metadata_path: the run's SQLite ML Metadata file.
        recheck_s: least seconds between two ML Metadata scans for an unknown version.
    """

    def __init__(self, metadata_path: str, recheck_s: float = 2.0) -> None:
        self.metadata_path = metadata_path
        self.recheck_s = float(recheck_s)
        self._stores: Dict[str, Any] = {}
        self._last_scan = -1e18
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RunEmbeddingStore({self.metadata_path!r})"

    def _scan(self) -> None:
        from embeddings.parquet_store import ParquetEmbeddingStore

        found: Dict[str, Any] = {}
        for art in reversed(embedding_artifacts(self.metadata_path)):  # oldest first
            store = ParquetEmbeddingStore(art.uri)
            for v in store.committed_versions():
                found[v] = store  # newer artifacts override older ones
        with self._lock:
            for v, store in found.items():
                old = self._stores.get(v)
                if old is None or str(old.root) != str(store.root):
                    self._stores[v] = store
            self._last_scan = time.monotonic()

    def store_for(self, model_version: str):
        """The Parquet store holding ``model_version``.

        Raises:
            VersionNotCommittedError: no MEG artifact of the run committed it (says what to run).
        """
        version = str(model_version)
        with self._lock:
            store = self._stores.get(version)
            stale = time.monotonic() - self._last_scan >= self.recheck_s
        if store is None and stale:
            self._scan()
            with self._lock:
                store = self._stores.get(version)
        if store is None:
            raise VersionNotCommittedError(
                f"model version {version!r} is not committed in the meta embeddings of run "
                f"{os.path.dirname(self.metadata_path)} (committed: {self.committed_versions()}); "
                "run meta-embedding generation for it (`limaml run`, or a refresh with the pushed "
                "model) or serve a version that has embeddings")
        return store

    def committed_versions(self) -> List[str]:
        """Versions with committed embeddings known so far."""
        with self._lock:
            return sorted(self._stores, key=lambda v: (len(v), v))

    def lookup(self, user_ids: Sequence[str], model_version: str,
               timeout_s: Optional[float] = None) -> StoreLookup:
        """Batched lookup in the store of ``model_version`` (see ``ParquetEmbeddingStore``)."""
        return self.store_for(model_version).lookup(user_ids, model_version, timeout_s=timeout_s)

    def embedding_dim(self, model_version: str) -> int:
        """E of a committed version."""
        return self.store_for(model_version).embedding_dim(model_version)


def load_version_into(target: Any, source: Any, model_version: str, rows_per_batch: int = 5000) -> int:
    """Copies one committed version from a store to another (e.g. Parquet -> Bigtable).

    Uses the target's own ``write`` (commit semantics of that store); the cold-start row goes
    with the users.

    Returns:
        Rows written (users plus the cold-start row).
    """
    batch = source.read_version(model_version)
    n = batch.num_users

    def chunks():
        for start in range(0, n, rows_per_batch):
            yield batch.slice(start, min(n, start + rows_per_batch))

    target.write(chunks())
    return n


# --------------------------------------------------------------------------- the stack
