"""Parquet meta-embedding store: the Arrow schema of a record and the batch <-> table codec.

Columns: ``user_id`` (string), ``embedding`` (``fixed_size_list<float32>[E]``, bit-exact),
``model_version`` (dictionary-encoded, so a file is self-describing), ``generated_at``,
``support_size``, ``last_interaction_ts`` (int64).
"""
from __future__ import annotations

from typing import Union

import numpy as np
import pyarrow as pa

from embeddings.record import EmbeddingBatch


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
