"""EmbeddingJoin of a multi-block model: ``[e_user, e_user×g]`` per evaluation example.

A model with the user × genre block (``ModelConfig.meta_blocks = ("user", "user_x_genre")``)
reads ``meta_embedding`` of width 2E. For an evaluation example of user ``u`` whose item has
primary genre ``g`` (:class:`serving.multi_block.PrimaryGenres` of its raw ``genres`` string, as
the Transform hashes it), the vector is what the ranker would send for that candidate: the
fallback chain of :func:`serving.multi_block.assemble` on the store rows of the evaluated model
version::

    u found:      [e_u, e_u#g]             (e_u#g missing -> e_u in the genre slot)
    u not found:  [cold, cold#g]           (cold#g missing -> cold in the genre slot)

(zeros in the genre slot instead, for a ``genre_combine="residual"`` model: the model folder's
:func:`serving.multi_block.served_genre_fallback`).

A user without a stored row (no history: the ``0`` cohort) is, as in the single-block join
(:mod:`join`, DESIGN.md section 1), first given the un-adapted output of *their own* meta
features, for both blocks: ``u`` = f(x_meta,u; θ_meta) and ``u#g`` = f_g([x_meta,u, one-hot(g)];
θ_g), computed in batches from the raw features of their examples, so that limaml and
limaml_multi meet new users alike; the store's cold-start rows are what a user whose examples
lack the meta features gets (and what every unknown user gets without a model folder).

Store rows are grouped by their owner user (:func:`embeddings.entity_keys.owner_users`: the rows
``u`` and ``u#g`` of one user land together); the cold-start rows ``__cold_start__#g`` (one per
catalogue genre, few) reach every user as a side input. Fallbacks are counted in Beam counters
(namespace :data:`COUNTER_NAMESPACE`, names :data:`serving.multi_block.FALLBACKS`), per example.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf

from components.embedding_join.join import ColdStartDoFn, attach, user_of
from embeddings import entity_keys
from embeddings.record import COLD_START_USER
from schema import features as F

COUNTER_NAMESPACE = "embedding_join"
OWN_COLD_START = "own_cold_start_users"
"""Counter of users without a stored row given their own un-adapted rows."""

KeyedRow = Tuple[str, np.ndarray]


def example_genre(serialized: bytes) -> bytes:
    """The raw ``genres`` string of a serialized example (``b""`` when it has none)."""
    values = tf.train.Example.FromString(serialized).features.feature[F.GENRES].bytes_list.value
    return values[0] if values else b""


def multi_block_vectors(user_id: str, examples: List[bytes], rows: Mapping[str, np.ndarray],
                        cold: np.ndarray, primary_genres, genre_fallback: str = "user"
                        ) -> Tuple[np.ndarray, Dict[str, int]]:
    """``[e_user, e_user×g]`` of each example of one user.

    Args:
        user_id: the user.
        examples: ``[n]`` serialized evaluation examples of the user.
        rows: ``{key: [E]}`` the user's store rows (``u``, ``u#g``) and the cold-start genre rows
            (``__cold_start__#g``); a key absent means no row.
        cold: ``[E]`` the cold-start row ``__cold_start__``.
        primary_genres: callable, raw genre strings ``[n]`` -> primary genre buckets ``[n]``
            (:class:`serving.multi_block.PrimaryGenres`).
        genre_fallback: a missing genre row's slot (:func:`serving.multi_block.assemble`).

    Returns:
        ``(vectors float32 [n, 2E], fallbacks {name: examples})``.
    """
    from serving.multi_block import assemble

    genres = primary_genres([example_genre(ex) for ex in examples])
    vectors, _, counts = assemble(rows, user_id, genres, cold, genre_fallback)
    return vectors, counts


def _fallback_counters() -> Dict[str, object]:
    from serving.multi_block import FALLBACKS

    return {name: beam.metrics.Metrics.counter(COUNTER_NAMESPACE, name)
            for name in (*FALLBACKS, OWN_COLD_START)}


def _attach_all(user: str, examples: List[bytes], rows: Mapping[str, np.ndarray], cold: np.ndarray,
                primary_genres, counters: Mapping[str, object], genre_fallback: str
                ) -> Iterable[bytes]:
    vectors, counts = multi_block_vectors(user, examples, rows, cold, primary_genres, genre_fallback)
    for name, n in counts.items():
        if n:
            counters[name].inc(n)
    for serialized, vector in zip(examples, vectors):
        yield from attach([serialized], vector)


class AttachMultiBlockDoFn(beam.DoFn):
    """Sets each example's ``meta_embedding`` to its ``[e_user, e_user×g]`` (see the module doc).

    Users without a stored row go to the ``cold`` output as ``(user, examples)`` when
    ``own_cold_start`` (their own un-adapted rows are computed downstream).

    Args:
        cold: ``[E]`` the store's ``__cold_start__`` row.
        own_cold_start: send users without a row to the ``cold`` output.
        genre_fallback: a missing genre row's slot (:func:`serving.multi_block.assemble`).
    """

    def __init__(self, cold: np.ndarray, own_cold_start: bool = False,
                 genre_fallback: str = "user") -> None:
        self._cold = np.asarray(cold, np.float32)
        self._own = own_cold_start
        self._genre_fallback = genre_fallback
        self._genres = None
        self._counters = {}

    def setup(self) -> None:
        from serving.multi_block import PrimaryGenres

        self._genres = PrimaryGenres()
        self._counters = _fallback_counters()

    def process(self, item: Tuple[str, Dict[str, list]], cold_rows: Mapping[str, np.ndarray]
                ) -> Iterable[bytes]:
        user, grouped = item
        examples = list(grouped["examples"])
        if not examples:
            return
        found = [(key, np.asarray(vec, np.float32)) for key, vec in grouped["rows"]]
        if self._own and user not in {key for key, _ in found}:
            yield beam.pvalue.TaggedOutput("cold", (user, examples))
            return
        rows: Dict[str, np.ndarray] = dict(cold_rows)
        rows.update(found)
        yield from _attach_all(user, examples, rows, self._cold, self._genres, self._counters,
                               self._genre_fallback)


class ColdStartMultiBlockDoFn(ColdStartDoFn):
    """Users without a stored row: their own un-adapted rows of both blocks, in batches.

    For a batch of users, one call of each block over all their examples: ``u`` =
    f(x_meta,u; θ_meta) from the user's first example, ``u#g`` = f_g([x_meta,u, one-hot(g)]; θ_g)
    from each example (``g`` its primary genre); then the fallback chain of
    :func:`multi_block_vectors` on those rows. A user whose first example lacks a meta feature
    gets the store's cold-start rows. (For a ``genre_combine="residual"`` model ``u#g`` is 0:
    :meth:`trainer.model.LimamlModel.genre_embedding`.)

    Args:
        model_dir: the multi-block model's folder (meta blocks and Transform graph).
        default: ``[E]`` the store's ``__cold_start__`` row.
        genre_fallback: a missing genre row's slot (:func:`serving.multi_block.assemble`).
    """

    def __init__(self, model_dir: Optional[str], default: np.ndarray,
                 genre_fallback: str = "user") -> None:
        super().__init__(model_dir, default)
        self._genre_fallback = genre_fallback

    def setup(self) -> None:
        from serving.multi_block import PrimaryGenres

        super().setup()
        self._primary = PrimaryGenres()
        self._counters = _fallback_counters()

    def _genre_vectors(self, serialized: List[bytes]) -> np.ndarray:
        """Un-adapted genre block output ``[n, E]`` of each example (its meta features, its genre)."""
        model = self._model
        genre_name = model.layout.global_multi_hot[0][0]
        encoded = self._encoded(serialized)
        feats = {n: encoded[n] for n in (*model.layout.meta_feature_names, genre_name)}
        return model.genre_embedding(feats).numpy()

    def _own_rows(self, batch: List[Tuple[str, List[bytes]]]) -> Dict[int, Dict[str, np.ndarray]]:
        """``{batch position: {user: [E], user#g: [E]}}`` of the users with meta features."""
        ok = [i for i, (_, examples) in enumerate(batch) if self._has_meta(examples[0])]
        if not ok:
            return {}
        e_users = self._vectors([batch[i][1][0] for i in ok])                       # [U, E]
        every = [ex for i in ok for ex in batch[i][1]]
        e_genres = self._genre_vectors(every)                                       # [N, E]
        genres = self._primary([example_genre(ex) for ex in every])                 # [N]
        out: Dict[int, Dict[str, np.ndarray]] = {}
        start = 0
        for j, i in enumerate(ok):
            user, examples = batch[i]
            stop = start + len(examples)
            rows = {entity_keys.genre_key(user, g): e for g, e in zip(genres[start:stop],
                                                                     e_genres[start:stop])}
            rows[user] = e_users[j]
            out[i] = rows
            start = stop
        return out

    def process(self, batch: List[Tuple[str, List[bytes]]],  # pylint: disable=arguments-differ
                cold_rows: Mapping[str, np.ndarray]) -> Iterable[bytes]:
        own = self._own_rows(batch)
        if own:
            self._counters[OWN_COLD_START].inc(len(own))
        for i, (user, examples) in enumerate(batch):
            rows: Dict[str, np.ndarray] = dict(cold_rows)
            rows.update(own.get(i, {}))
            yield from _attach_all(user, examples, rows, self._default, self._primary, self._counters,
                                   self._genre_fallback)


def owner_of(row: KeyedRow) -> Tuple[str, KeyedRow]:
    """``(owner user, (key, vector))`` of one store row (``"u#3"`` -> ``"u"``)."""
    return str(entity_keys.owner_users([row[0]])[0]), row


@beam.ptransform_fn
def JoinMultiBlockEmbeddings(examples: beam.PCollection, rows: beam.PCollection,  # pylint: disable=invalid-name
                             cold: np.ndarray, model_dir: Optional[str] = None) -> beam.PCollection:
    """Joins serialized examples with a multi-block store's rows.

    Args:
        examples: serialized evaluation tf.Examples (raw features: ``user_id``, ``genres``, the
            meta features).
        rows: ``(key, [E] vector)`` of every store row but ``__cold_start__``: user rows,
            ``user#g`` rows and ``__cold_start__#g`` rows.
        cold: ``[E]`` the ``__cold_start__`` row.
        model_dir: the evaluated model's folder, for users without a row to get their own
            un-adapted rows; None gives them the store's cold-start rows.

    Returns:
        Serialized examples with ``meta_embedding`` set to ``[e_user, e_user×g]`` (2E floats).
    """
    is_cold = lambda row: entity_keys.owner_users([row[0]])[0] == COLD_START_USER  # noqa: E731
    cold_rows = beam.pvalue.AsDict(rows | "ColdGenreRows" >> beam.Filter(is_cold))
    user_rows = (rows
                 | "UserRows" >> beam.Filter(lambda row: not is_cold(row))
                 | "KeyByOwner" >> beam.Map(owner_of))
    keyed = examples | "KeyByUser" >> beam.Map(user_of)
    grouped = {"examples": keyed, "rows": user_rows} | "CoGroup" >> beam.CoGroupByKey()
    from serving.multi_block import served_genre_fallback

    fallback = "user" if model_dir is None else served_genre_fallback(model_dir)
    attach_fn = AttachMultiBlockDoFn(cold, own_cold_start=model_dir is not None,
                                     genre_fallback=fallback)
    if model_dir is None:
        return grouped | "Attach" >> beam.ParDo(attach_fn, cold_rows)
    split = grouped | "Attach" >> beam.ParDo(attach_fn, cold_rows).with_outputs("cold", main="known")
    own = (split.cold
           | "BatchCold" >> beam.BatchElements(min_batch_size=1, max_batch_size=256)
           | "OwnColdStart" >> beam.ParDo(ColdStartMultiBlockDoFn(model_dir, cold, fallback), cold_rows))
    return (split.known, own) | "All" >> beam.Flatten()


def read_pairs(record: Mapping[str, object]) -> KeyedRow:
    """``(key, float32 [E])`` of a Parquet row ``{"user_id", "embedding"}``."""
    return str(record["user_id"]), np.asarray(record["embedding"], np.float32)
