"""Meta-embedding records and stores (DESIGN.md sections 1, 3, 4).

* :mod:`embeddings.record`: :class:`~embeddings.record.EmbeddingBatch` (columnar records),
  :data:`~embeddings.record.COLD_START_USER`, :class:`~embeddings.record.VersionNotCommittedError`.
* :mod:`embeddings.parquet_store`: :class:`~embeddings.parquet_store.ParquetEmbeddingStore`
  (always written; the local/test default for serving).
* :mod:`embeddings.bigtable_store`: :class:`~embeddings.bigtable_store.BigtableEmbeddingStore`
  (production online store).
* :mod:`embeddings.emulator`: :class:`~embeddings.emulator.BigtableEmulator` (``cbtemulator``).

The online reader is :class:`serving.embedding_lookup.EmbeddingLookup`.
"""
