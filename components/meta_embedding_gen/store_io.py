"""Staging and committing MEG output: Beam writes Parquet parts, the stores commit a version.

Workers write rows to ``<artifact>/staging/`` (never read by anyone else); once the Beam job has
finished, the staged rows are streamed, batch by batch, into the Parquet store (atomic version
folder) and, when configured, Bigtable (version pointer written last). A failure at any point
leaves the previously committed version serving.
"""
from __future__ import annotations

import glob
import os
import shutil
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embeddings.entity_keys import UserRowCount
from embeddings.record import COLD_START_USER, EmbeddingBatch

if TYPE_CHECKING:  # pragma: no cover
    from limaml.config import LimamlConfig

STAGING = "staging"
STAGING_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("embedding", pa.list_(pa.float32())),
    ("support_size", pa.int64()),
    ("last_interaction_ts", pa.int64()),
])


def clear_staging(staging_dir: str) -> None:
    """Removes an earlier run's staged parts (a rerun must not read them again)."""
    if os.path.isdir(staging_dir):
        shutil.rmtree(staging_dir)


def staging_table(user_ids: np.ndarray, embeddings: np.ndarray, support_size: np.ndarray,
                  last_interaction_ts: np.ndarray) -> pa.Table:
    """Embedding rows of U users as one Arrow table (:data:`STAGING_SCHEMA`), no per-row Python.

    Args:
        user_ids: object str [U].
        embeddings: float32 [U, E].
        support_size: int [U].
        last_interaction_ts: int [U].
    """
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    u, e = emb.shape
    vectors = pa.ListArray.from_arrays(pa.array(np.arange(0, u * e + 1, e, dtype=np.int32)),
                                       pa.array(emb.reshape(-1)))
    return pa.Table.from_arrays(
        [pa.array(np.asarray(user_ids, dtype=object), type=pa.string()), vectors,
         pa.array(np.asarray(support_size, dtype=np.int64)),
         pa.array(np.asarray(last_interaction_ts, dtype=np.int64))], schema=STAGING_SCHEMA)


def table_to_batch(table: "pa.Table | pa.RecordBatch", model_version: str, generated_at: int
                   ) -> EmbeddingBatch:
    """Rows of :data:`STAGING_SCHEMA` -> a validated :class:`EmbeddingBatch`."""
    def col(name: str) -> pa.Array:
        c = table.column(name)
        return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

    values = np.asarray(col("embedding").flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    vectors = values.reshape(table.num_rows, -1) if table.num_rows else values.reshape(0, 1)
    return EmbeddingBatch.create(
        user_ids=col("user_id").to_numpy(zero_copy_only=False).astype(object),
        embeddings=vectors,
        support_size=col("support_size").to_numpy(),
        last_interaction_ts=col("last_interaction_ts").to_numpy(),
        model_version=model_version, generated_at=generated_at)


def staged_batches(staging_dir: str, model_version: str, generated_at: int, cold: Optional[np.ndarray],
                   rows_per_batch: int = 65_536) -> Iterator[EmbeddingBatch]:
    """Streams the staged rows as EmbeddingBatches, the cold-start row first."""
    if cold is not None:
        yield EmbeddingBatch.create(
            user_ids=[COLD_START_USER], embeddings=cold[None, :], support_size=[0],
            last_interaction_ts=[0], model_version=model_version, generated_at=generated_at)
    files = sorted(glob.glob(os.path.join(staging_dir, "*.parquet")))
    if not files:
        raise ValueError(f"{staging_dir}: MEG produced no embeddings (no user had an interaction)")
    for path in files:
        for rb in pq.ParquetFile(path).iter_batches(batch_size=rows_per_batch):
            if rb.num_rows == 0:
                continue
            yield table_to_batch(rb, model_version, generated_at)


def save_cold(vector: np.ndarray, path: str) -> None:
    """Writes the cold-start vector computed by the Beam job."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.asarray(vector, dtype=np.float32))


def load_cold(path: str) -> np.ndarray:
    """Reads the cold-start vector; fails clearly if the job produced none."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no cold-start vector (MEG saw no user)")
    return np.load(path)


def open_bigtable(cfg: "LimamlConfig"):
    """The run's Bigtable store (table created if missing), or None when the config names none."""
    e = cfg.embeddings
    if not e.bigtable_table:
        return None
    from embeddings.bigtable_store import BigtableEmbeddingStore

    store = BigtableEmbeddingStore.open(e.bigtable_project, e.bigtable_instance, e.bigtable_table,
                                        keep_versions=e.keep_versions)
    store.ensure_table()
    return store


def write_stores(cfg: "LimamlConfig", staging_dir: str, store_root: str, version: str, generated_at: int,
                 cold: Optional[np.ndarray], bigtable_attempt=None) -> int:
    """Commits the staged rows to Parquet (always) and Bigtable (when configured).

    The Bigtable table is opened (and created if missing) before anything is written, so an
    unreachable Bigtable fails the run with no store touched. Each store commits atomically
    (Parquet: version folder rename; Bigtable: rows, then the version pointer). Each store then
    retires versions beyond ``cfg.embeddings.keep_versions`` by its serving pins (never the
    served version or the one before it; embeddings/retention.py).

    Args:
        cfg: the run's config (``cfg.embeddings`` names the Bigtable table, if any).
        staging_dir: folder written by :func:`generate.stage_embeddings`.
        store_root: Parquet store root.
        version: model version tag.
        generated_at: unix seconds of this run.
        cold: float32 [E] cold-start vector.
        bigtable_attempt: the :class:`embeddings.bigtable_store.WriteAttempt` whose user rows the
            Beam workers already wrote (:mod:`bigtable_sink`): only the cold-start row and the
            pointer are written here. None: every staged row is written here (parallel chunks).

    Returns:
        Users written (user rows: the cold-start rows and a multi-block model's
        ``"<user>#<g>"`` rows not counted).
    """
    from embeddings.parquet_store import ParquetEmbeddingStore

    bigtable = open_bigtable(cfg)
    counted = UserRowCount()
    summary = ParquetEmbeddingStore(store_root, keep_versions=cfg.embeddings.keep_versions).write(
        counted.through(staged_batches(staging_dir, version, generated_at, cold)))
    if bigtable is not None and bigtable_attempt is None:
        bigtable.write(staged_batches(staging_dir, version, generated_at, cold))
    elif bigtable is not None:
        rows = int(summary.rows)
        if cold is not None:
            bigtable.write_rows(bigtable_attempt, EmbeddingBatch.cold_start(cold, version, generated_at))
        bigtable.commit(bigtable_attempt, rows, int(summary.embedding_dim), generated_at,
                        cold is not None)
    return counted.users
