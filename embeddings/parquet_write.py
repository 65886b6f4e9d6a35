"""Parquet meta-embedding store: the streaming write and its atomic commit.

A write streams the batches into its own temp folder ``.tmp-model_version=<v>-<id>`` (holding an
flock on ``.writer.lock`` inside, so no cleanup removes it while it runs), renames the folder to
``model_version=<v>/commit-<id>`` and then atomically replaces the version's manifest
(``_metadata.json``) to name it. Readers read the manifest once and only files of the commit it
names, so they never see a mix of two commits; a crash at any point leaves the previously
committed copy readable. The commit folder a rewrite replaces is kept until the next rewrite.

:class:`WriteMixin` is one part of :class:`embeddings.parquet_store.ParquetEmbeddingStore` (whose
constructor sets the attributes declared here).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

import pyarrow.parquet as pq

from embeddings.atomic_files import _flocked, _fsync_dir, _replace_file
from embeddings.parquet_codec import arrow_schema, batch_to_table
from embeddings.parquet_layout import (
    _COMMIT_LOCK,
    _COMMIT_PREFIX,
    _COMMIT_RE,
    _LEGACY_PART_RE,
    _MANIFEST_TMP,
    _METADATA,
    _PREFIX,
    _TMP_PREFIX,
    _WRITER_LOCK,
)
from embeddings.record import EmbeddingBatch, StreamCheck
from embeddings.write_stream import first_batch
from embeddings.write_summary import WriteSummary


class WriteMixin:
    """Writes one model version, streaming, and commits it with one manifest switch."""

    root: Path
    rows_per_file: int
    row_group_size: int
    fsync: bool
    keep_versions: Optional[int]
    stale_temp_s: float

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
        it, first = first_batch(batches)
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
