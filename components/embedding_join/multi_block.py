"""EmbeddingJoin of a multi-block model: ``[e_user, e_user×g]`` per evaluation example.

A model with the user × genre block (``ModelConfig.meta_blocks = ("user", "user_x_genre")``)
reads ``meta_embedding`` of width 2E. For an evaluation example of user ``u`` whose item has
primary genre ``g`` (:class:`serving.multi_block.PrimaryGenres` of its raw ``genres`` string, as
the Transform hashes it), the vector is what the ranker would send for that candidate: the
fallback chain of :func:`serving.multi_block.assemble` on the store rows of the evaluated model
version::

    u found:      [e_u, e_u#g]             (e_u#g missing -> e_u in the genre slot)
    u not found:  [cold, cold#g]           (cold#g missing -> cold in the genre slot)

Store rows are grouped by their owner user (:func:`embeddings.entity_keys.owner_users`: the rows
``u`` and ``u#g`` of one user land together); the cold-start rows ``__cold_start__#g`` (one per
catalogue genre, few) reach every user as a side input. Fallbacks are counted in Beam counters
(namespace :data:`COUNTER_NAMESPACE`, names :data:`serving.multi_block.FALLBACKS`), per example.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf

from components.embedding_join.join import attach, user_of
from embeddings import entity_keys
from embeddings.record import COLD_START_USER
from schema import features as F

COUNTER_NAMESPACE = "embedding_join"

KeyedRow = Tuple[str, np.ndarray]


def example_genre(serialized: bytes) -> bytes:
    """The raw ``genres`` string of a serialized example (``b""`` when it has none)."""
    values = tf.train.Example.FromString(serialized).features.feature[F.GENRES].bytes_list.value
    return values[0] if values else b""


def multi_block_vectors(user_id: str, examples: List[bytes], rows: Mapping[str, np.ndarray],
                        cold: np.ndarray, primary_genres) -> Tuple[np.ndarray, Dict[str, int]]:
    """``[e_user, e_user×g]`` of each example of one user.

    Args:
        user_id: the user.
        examples: ``[n]`` serialized evaluation examples of the user.
        rows: ``{key: [E]}`` the user's store rows (``u``, ``u#g``) and the cold-start genre rows
            (``__cold_start__#g``); a key absent means no row.
        cold: ``[E]`` the cold-start row ``__cold_start__``.
        primary_genres: callable, raw genre strings ``[n]`` -> primary genre buckets ``[n]``
            (:class:`serving.multi_block.PrimaryGenres`).

    Returns:
        ``(vectors float32 [n, 2E], fallbacks {name: examples})``.
    """
    from serving.multi_block import assemble

    genres = primary_genres([example_genre(ex) for ex in examples])
    vectors, _, counts = assemble(rows, user_id, genres, cold)
    return vectors, counts


class AttachMultiBlockDoFn(beam.DoFn):
    """Sets each example's ``meta_embedding`` to its ``[e_user, e_user×g]`` (see the module doc).

    Args:
        cold: ``[E]`` the store's ``__cold_start__`` row.
    """

    def __init__(self, cold: np.ndarray) -> None:
        self._cold = np.asarray(cold, np.float32)
        self._genres = None
        self._counters = {}

    def setup(self) -> None:
        from serving.multi_block import FALLBACKS, PrimaryGenres

        self._genres = PrimaryGenres()
        self._counters = {name: beam.metrics.Metrics.counter(COUNTER_NAMESPACE, name)
                          for name in FALLBACKS}

    def process(self, item: Tuple[str, Dict[str, list]], cold_rows: Mapping[str, np.ndarray]
                ) -> Iterable[bytes]:
        user, grouped = item
        examples = list(grouped["examples"])
        if not examples:
            return
        rows: Dict[str, np.ndarray] = dict(cold_rows)
        rows.update((key, np.asarray(vec, np.float32)) for key, vec in grouped["rows"])
        vectors, counts = multi_block_vectors(user, examples, rows, self._cold, self._genres)
        for name, n in counts.items():
            if n:
                self._counters[name].inc(n)
        for serialized, vector in zip(examples, vectors):
            yield from attach([serialized], vector)


def owner_of(row: KeyedRow) -> Tuple[str, KeyedRow]:
    """``(owner user, (key, vector))`` of one store row (``"u#3"`` -> ``"u"``)."""
    return str(entity_keys.owner_users([row[0]])[0]), row


@beam.ptransform_fn
def JoinMultiBlockEmbeddings(examples: beam.PCollection, rows: beam.PCollection,  # pylint: disable=invalid-name
                             cold: np.ndarray) -> beam.PCollection:
    """Joins serialized examples with a multi-block store's rows.

    Args:
        examples: serialized evaluation tf.Examples (raw features: ``user_id``, ``genres``).
        rows: ``(key, [E] vector)`` of every store row but ``__cold_start__``: user rows,
            ``user#g`` rows and ``__cold_start__#g`` rows.
        cold: ``[E]`` the ``__cold_start__`` row.

    Returns:
        Serialized examples with ``meta_embedding`` set to ``[e_user, e_user×g]`` (2E floats).
    """
    is_cold = lambda row: entity_keys.owner_users([row[0]])[0] == COLD_START_USER  # noqa: E731
    cold_rows = rows | "ColdGenreRows" >> beam.Filter(is_cold)
    user_rows = (rows
                 | "UserRows" >> beam.Filter(lambda row: not is_cold(row))
                 | "KeyByOwner" >> beam.Map(owner_of))
    keyed = examples | "KeyByUser" >> beam.Map(user_of)
    return ({"examples": keyed, "rows": user_rows}
            | "CoGroup" >> beam.CoGroupByKey()
            | "Attach" >> beam.ParDo(AttachMultiBlockDoFn(cold), beam.pvalue.AsDict(cold_rows)))


def read_pairs(record: Mapping[str, object]) -> KeyedRow:
    """``(key, float32 [E])`` of a Parquet row ``{"user_id", "embedding"}``."""
    return str(record["user_id"]), np.asarray(record["embedding"], np.float32)
