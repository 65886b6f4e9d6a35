"""Parquet meta-embedding store: the always-on store (DESIGN.md sections 1, 3, 4).

Layout under ``root``::

    root/
      model_version=<v>/            # visible == committed
        part-00000.parquet          # columns: user_id, embedding, model_version, generated_at,
        part-00001.parquet          #          support_size, last_interaction_ts
        _metadata.json              # embedding_dim, num_users, committed_at_ns, files
      .tmp-model_version=<v>-<id>/  # a write in progress (or one that crashed): never read

Atomicity: a write streams into a hidden temp directory and publishes it with ``os.rename``.
A crash at any point before the rename leaves at most a hidden temp directory behind; readers
ignore it and the previously committed copy of every version stays readable
(:meth:`ParquetEmbeddingStore.remove_stale_temp` deletes leftovers). Rewriting a version that
exists replaces it: the old directory is renamed away, the new one renamed in, the old one deleted.
Between those two renames (microseconds) the version is briefly absent; it is never partial.

The ``embedding`` column is ``fixed_size_list<float32>[E]``; values are stored bit-exactly.
``model_version`` is also a column (dictionary-encoded) so a file is self-describing; read the
files directly (as this module does), not through Hive partition discovery, which would see the
column twice.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embeddings.record import (
    COLD_START_USER,
    EmbeddingBatch,
    StreamCheck,
    StoreLookup,
    VersionNotCommittedError,
    as_user_id_array,
    batches_of,
    validate_model_version,
)

_PREFIX = "model_version="
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_METADATA = "_metadata.json"


@dataclasses.dataclass(frozen=True)
class WriteSummary:
    """Result of a committed write.

    Attributes:
        model_version: version written.
        num_users: rows written (including the cold-start row).
        embedding_dim: E.
        location: where the version lives (a directory, or ``table/version`` for Bigtable).
        seconds: wall time of the write.
    """

    model_version: str
    num_users: int
    embedding_dim: int
    location: str
    seconds: float

    @property
    def rows(self) -> int:
        """Alias of ``num_users`` (rows written, the cold-start row included)."""
        return self.num_users


def arrow_schema(embedding_dim: int) -> pa.Schema:
    """Parquet schema of the meta-embedding record for embedding size ``embedding_dim``."""
    return pa.schema([
        ("user_id", pa.string()),
        ("embedding", pa.list_(pa.float32(), embedding_dim)),
        ("model_version", pa.dictionary(pa.int32(), pa.string())),
        ("generated_at", pa.int64()),
        ("support_size", pa.int64()),
        ("last_interaction_ts", pa.int64()),
    ])


def batch_to_table(batch: EmbeddingBatch) -> pa.Table:
    """Converts a batch to an Arrow table with :func:`arrow_schema` (no Python loop over rows)."""
    n, e = batch.embeddings.shape
    emb = pa.FixedSizeListArray.from_arrays(pa.array(batch.embeddings.reshape(-1)), e)
    version = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([batch.model_version], pa.string()))
    return pa.Table.from_arrays(
        [
            pa.array(batch.user_ids, type=pa.string()),
            emb,
            version,
            pa.array(np.full(n, batch.generated_at, dtype=np.int64)),
            pa.array(batch.support_size),
            pa.array(batch.last_interaction_ts),
        ],
        schema=arrow_schema(e),
    )


def embedding_column_to_numpy(col: Union[pa.ChunkedArray, pa.Array], embedding_dim: int
                              ) -> np.ndarray:
    """float32 [N, E] from a (fixed-size) list<float32> column (offsets respected)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array(
            [], type=pa.list_(pa.float32(), embedding_dim))
    flat = col.flatten().to_numpy(zero_copy_only=False)
    flat = np.asarray(flat, dtype=np.float32)
    if flat.size != len(col) * embedding_dim:
        raise ValueError(
            f"embedding column holds {flat.size} floats for {len(col)} rows; expected "
            f"{embedding_dim} per row (corrupt file or wrong embedding_dim)")
    return flat.reshape(len(col), embedding_dim)


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


@dataclasses.dataclass
class _LoadedVersion:
    key: Tuple[int, int]  # (st_ino, st_mtime_ns) of the version directory when loaded
    index: pd.Index
    embeddings: np.ndarray  # float32 [N, E]
    support_size: np.ndarray
    last_interaction_ts: np.ndarray
    generated_at: np.ndarray


class ParquetEmbeddingStore:
    """Writes and reads meta embeddings as Parquet, one directory per model version.

    Args:
        root: base directory (created on first write).
        rows_per_file: a new ``part-*.parquet`` file is started after this many rows.
        row_group_size: Parquet row-group size.
        max_loaded_versions: versions kept in memory for lookups (LRU).
        fsync: flush files and directories to disk before publishing (durability on power loss).
    """

    def __init__(self, root: Union[str, os.PathLike], rows_per_file: int = 1_000_000,
                 row_group_size: int = 65_536, max_loaded_versions: int = 2,
                 fsync: bool = True) -> None:
        if rows_per_file < 1 or row_group_size < 1 or max_loaded_versions < 1:
            raise ValueError(
                f"rows_per_file ({rows_per_file}), row_group_size ({row_group_size}) and "
                f"max_loaded_versions ({max_loaded_versions}) must be >= 1")
        self.root = Path(root)
        self.rows_per_file = int(rows_per_file)
        self.row_group_size = int(row_group_size)
        self.max_loaded_versions = int(max_loaded_versions)
        self.fsync = fsync
        self._loaded: "OrderedDict[str, _LoadedVersion]" = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ paths
    def version_dir(self, model_version: str) -> Path:
        """Directory of a committed version (may not exist)."""
        return self.root / f"{_PREFIX}{validate_model_version(model_version)}"

    def __repr__(self) -> str:
        return f"ParquetEmbeddingStore({str(self.root)!r})"

    # ------------------------------------------------------------------ write
    def write(self, batches: Union[EmbeddingBatch, Iterable[EmbeddingBatch]],
              require_cold_start: bool = True) -> WriteSummary:
        """Writes one model version, streaming, and commits it atomically.

        Batches are written as they arrive (only one batch is in memory at a time). All
        batches must have the same ``model_version`` and embedding size; user ids must be unique
        across the whole stream. Rewriting an existing version replaces it (idempotent for the
        same input).

        Args:
            batches: one :class:`EmbeddingBatch` or an iterable (e.g. a generator) of them.
            require_cold_start: fail unless some batch holds the :data:`COLD_START_USER` row.

        Returns:
            A :class:`WriteSummary`.

        Raises:
            ValueError: no rows, mixed versions / embedding sizes, a user repeated across batches,
                missing cold-start row. Nothing becomes visible in that case.
            Any exception raised by the input iterator propagates, leaving nothing visible.
        """
        t0 = time.perf_counter()
        it = iter(batches_of(batches))
        first = next(it, None)
        if first is None:
            raise ValueError("no batches to write: pass at least one EmbeddingBatch")
        version, dim = first.model_version, first.embedding_dim
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{_TMP_PREFIX}{_PREFIX}{version}-{uuid.uuid4().hex}"
        tmp.mkdir()
        schema = arrow_schema(dim)
        stream = StreamCheck(first)
        files: List[str] = []
        writer: Optional[pq.ParquetWriter] = None
        rows_in_file = 0
        total = 0
        gen_min, gen_max = first.generated_at, first.generated_at
        try:
            batch: Optional[EmbeddingBatch] = first
            while batch is not None:
                stream.check(batch)
                gen_min = min(gen_min, batch.generated_at)
                gen_max = max(gen_max, batch.generated_at)
                start = 0
                while start < batch.num_users:
                    if writer is None or rows_in_file >= self.rows_per_file:
                        if writer is not None:
                            writer.close()
                        name = f"part-{len(files):05d}.parquet"
                        files.append(name)
                        writer = pq.ParquetWriter(str(tmp / name), schema)
                        rows_in_file = 0
                    stop = min(batch.num_users, start + self.rows_per_file - rows_in_file)
                    writer.write_table(batch_to_table(batch.slice(start, stop)),
                                       row_group_size=self.row_group_size)
                    rows_in_file += stop - start
                    total += stop - start
                    start = stop
                batch = next(it, None)
            if writer is not None:
                writer.close()
                writer = None
            if require_cold_start and not stream.has_cold:
                raise ValueError(
                    f"version {version!r} has no cold-start row: add "
                    f"EmbeddingBatch.cold_start(<un-adapted meta block output>, {version!r}, ...) "
                    "to the stream (or pass require_cold_start=False)")
            now_ns = time.time_ns()
            try:  # a rerun keeps the version's place in the commit order
                first_ns = int(self.version_metadata(version)["first_committed_at_ns"])
            except (VersionNotCommittedError, KeyError, ValueError, OSError):
                first_ns = now_ns
            meta = {
                "model_version": version, "embedding_dim": dim, "num_users": total,
                "generated_at_min": gen_min, "generated_at_max": gen_max,
                "committed_at_ns": now_ns, "first_committed_at_ns": first_ns,
                "files": files, "has_cold_start": stream.has_cold,
            }
            (tmp / _METADATA).write_text(json.dumps(meta, indent=1, sort_keys=True))
            if self.fsync:
                for name in files + [_METADATA]:
                    with open(tmp / name, "rb") as fh:
                        os.fsync(fh.fileno())
                _fsync_dir(tmp)
            self._publish(tmp, self.version_dir(version))
        except BaseException:
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # noqa: BLE001 - already failing; keep the original error
                    pass
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return WriteSummary(version, total, dim, str(self.version_dir(version)),
                            time.perf_counter() - t0)

    def _publish(self, tmp: Path, target: Path) -> None:
        trash: Optional[Path] = None
        if target.exists():
            trash = self.root / f"{_TRASH_PREFIX}{target.name}-{uuid.uuid4().hex}"
            os.rename(target, trash)
        try:
            os.rename(tmp, target)
        except BaseException:
            if trash is not None and not target.exists():
                os.rename(trash, target)
            raise
        if self.fsync:
            _fsync_dir(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def remove_stale_temp(self, older_than_s: float = 24 * 3600) -> List[str]:
        """Deletes temp/trash directories left by crashed writes older than ``older_than_s``.

        Returns:
            The names removed.
        """
        removed = []
        if not self.root.exists():
            return removed
        now = time.time()
        for p in self.root.iterdir():
            if p.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and p.is_dir():
                if now - p.stat().st_mtime >= older_than_s:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        return removed

    def delete_version(self, model_version: str) -> bool:
        """Removes a committed version (atomically hidden first). Returns whether it existed."""
        target = self.version_dir(model_version)
        if not target.exists():
            return False
        trash = self.root / f"{_TRASH_PREFIX}{target.name}-{uuid.uuid4().hex}"
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
        with self._lock:
            self._loaded.pop(model_version, None)
        return True

    # ------------------------------------------------------------------ read
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

    def version_metadata(self, model_version: str) -> Dict:
        """The ``_metadata.json`` of a committed version.

        Raises:
            VersionNotCommittedError: the version is not committed under ``root``.
        """
        path = self.version_dir(model_version) / _METADATA
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise VersionNotCommittedError(
                f"model version {model_version!r} is not committed in {self.root} "
                f"(committed: {self.committed_versions()}); run meta-embedding generation for it "
                "or ask for a committed version") from None

    def _load(self, model_version: str) -> _LoadedVersion:
        vdir = self.version_dir(model_version)
        try:
            st = vdir.stat()
        except FileNotFoundError:
            st = None
        if st is None or not (vdir / _METADATA).is_file():
            self.version_metadata(model_version)  # raises VersionNotCommittedError
        key = (st.st_ino, st.st_mtime_ns)
        with self._lock:
            cached = self._loaded.get(model_version)
            if cached is not None and cached.key == key:
                self._loaded.move_to_end(model_version)
                return cached
        meta = self.version_metadata(model_version)
        dim = int(meta["embedding_dim"])
        tables = [pq.read_table(str(vdir / f), columns=[
            "user_id", "embedding", "support_size", "last_interaction_ts", "generated_at"])
            for f in meta["files"]]
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
