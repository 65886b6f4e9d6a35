"""EmbeddingJoin: evaluation examples + their user's meta embedding of the matching model version."""
