"""MetaEmbeddingGen: fine-tune the meta block per user (batched) and store the meta embeddings."""
