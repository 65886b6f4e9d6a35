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
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embeddings.record import (
    COLD_START_USER,
    EmbeddingBatch,
    StoreLookup,
    StreamCheck,
    VersionNotCommittedError,
    as_user_id_array,
    batches_of,
    validate_model_version,
)
from embeddings.retention import ServingPins, versions_to_retire

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


@dataclasses.dataclass
class _LoadedVersion:
    key: Tuple[int, int]  # (st_ino, st_mtime_ns) of the manifest it was loaded through
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

    # ------------------------------------------------------------------ write
    def write(self, batches: Union[EmbeddingBatch, Iterable[EmbeddingBatch]],
              require_cold_start: bool = True) -> WriteSummary:
        """Writes one model version, streaming, and commits it atomically.

        Batches are written as they arrive (only one batch is in memory at a time). All
        batches must have the same ``model_version`` and embedding size; user ids must be unique
        across the whole stream. Rewriting an existing version replaces it (idempotent for the
        same input). Before writing, temp folders of crashed writers are removed
        (:meth:`remove_stale_temp`); after the commit, versions beyond ``keep_versions`` are
        retired (:meth:`retire_versions`).

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
        self.remove_stale_temp(self.stale_temp_s)
        commit = f"{_COMMIT_PREFIX}{uuid.uuid4().hex}"
        tmp = self.root / f"{_TMP_PREFIX}{_PREFIX}{version}-{commit[len(_COMMIT_PREFIX):]}"
        tmp.mkdir()
        lock_fd = os.open(str(tmp / _WRITER_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        schema = arrow_schema(dim)
        stream = StreamCheck(first)
        files: List[str] = []
        writer: Optional[pq.ParquetWriter] = None
        rows_in_file = 0
        total = 0
        gen_min, gen_max = first.generated_at, first.generated_at
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # tells remove_stale_temp this writer is alive
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
            if self.fsync:
                for name in files:
                    with open(tmp / name, "rb") as fh:
                        os.fsync(fh.fileno())
                _fsync_dir(tmp)
            meta = {
                "model_version": version, "embedding_dim": dim, "num_users": total,
                "generated_at_min": gen_min, "generated_at_max": gen_max,
                "commit": commit, "files": [f"{commit}/{name}" for name in files],
                "has_cold_start": stream.has_cold,
            }
            self._commit(tmp, version, commit, meta)
        except BaseException:
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # noqa: BLE001 - already failing; keep the original error
                    pass
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(lock_fd)
        if self.keep_versions is not None:
            self.retire_versions()
        return WriteSummary(version, total, dim, str(self.version_dir(version)),
                            time.perf_counter() - t0)

    def _commit(self, tmp: Path, version: str, commit: str, meta: Dict) -> None:
        """Moves the written folder in and switches the version's manifest to it (one rename).

        Under the version's commit lock: the commit folder replaced now is kept for readers still
        on it; older ones (and legacy top-level parts, crashed commits) are removed.
        """
        vdir = self.version_dir(version)
        vdir.mkdir(exist_ok=True)
        with _flocked(vdir / _COMMIT_LOCK):
            try:
                old = json.loads((vdir / _METADATA).read_text())
            except (OSError, ValueError):
                old = None
            now_ns = time.time_ns()
            first_ns = now_ns
            if old is not None:  # a rerun keeps the version's place in the commit order
                first_ns = int(old.get("first_committed_at_ns", old.get("committed_at_ns", now_ns)))
            meta = {**meta, "committed_at_ns": now_ns, "first_committed_at_ns": first_ns}
            os.rename(tmp, vdir / commit)  # our lock goes with it: never a lock-free temp
            with contextlib.suppress(FileNotFoundError):
                os.unlink(vdir / commit / _WRITER_LOCK)
            _replace_file(vdir / _METADATA, json.dumps(meta, indent=1, sort_keys=True), self.fsync)
            previous = (old or {}).get("commit")
            legacy_is_previous = old is not None and previous is None
            for p in vdir.iterdir():
                if _COMMIT_RE.match(p.name) and p.name not in (commit, previous) \
                        and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)  # two commits old, or crashed
                elif _LEGACY_PART_RE.match(p.name) and not legacy_is_previous:
                    p.unlink()  # a legacy (pre-manifest) copy two commits old
                elif p.name.startswith(_MANIFEST_TMP) and p.is_file():
                    p.unlink()  # a crashed manifest switch

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

    # ------------------------------------------------------------------ retention
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
