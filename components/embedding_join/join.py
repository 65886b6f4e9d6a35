"""Beam logic of EmbeddingJoin."""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf

from embeddings.record import COLD_START_USER
from schema import features as F


def user_of(serialized: bytes) -> Tuple[str, bytes]:
    """(user_id, example) of a serialized tf.Example."""
    ex = tf.train.Example.FromString(serialized)
    values = ex.features.feature[F.USER_ID].bytes_list.value
    if not values:
        raise ValueError(f"evaluation example without {F.USER_ID!r}: {ex}")
    return values[0].decode(), serialized


def with_embedding(item: Tuple[str, Dict[str, list]], cold: np.ndarray) -> Iterable[bytes]:
    """Adds ``meta_embedding`` (the user's vector, else the cold-start default) to each example."""
    _, grouped = item
    vectors = grouped["embedding"]
    vector = np.asarray(vectors[0], dtype=np.float32) if vectors else cold
    for serialized in grouped["examples"]:
        ex = tf.train.Example.FromString(serialized)
        ex.features.feature[F.META_EMBEDDING].float_list.value[:] = vector.tolist()
        yield ex.SerializeToString(deterministic=True)


@beam.ptransform_fn
def JoinEmbeddings(examples: beam.PCollection, embeddings: beam.PCollection, cold: np.ndarray
                   ) -> beam.PCollection:  # pylint: disable=invalid-name
    """Joins serialized examples with ``(user_id, vector)`` pairs on the user id."""
    keyed = examples | "KeyByUser" >> beam.Map(user_of)
    return ({"examples": keyed, "embedding": embeddings}
            | "CoGroup" >> beam.CoGroupByKey()
            | "Attach" >> beam.FlatMap(with_embedding, cold))


def is_cold_row(user_id: str) -> bool:
    """True for the reserved cold-start row."""
    return user_id == COLD_START_USER
