"""Beam logic of meta-embedding generation (MEG), columnar end to end.

Input of :func:`GenerateEmbeddings`: a PCollection of :class:`UserBatch` (whole users, one numpy
array per encoded column: every model feature, ``label``, ``timestamp``, ``user_id`` and
``user_hash``, what Transform outputs, see :mod:`trainer.layout`), from
:mod:`components.meta_embedding_gen.inputs`. Per user, the most recent ``max_recent``
interactions (as of ``as_of``) are the support set, cut with vectorised offsets
(:mod:`support_window`); the trainer's batched fine-tune kernel adapts the meta block for
``users_per_batch`` users per call and aggregates their outputs (latest / mean / max). Output
rows leave as Arrow tables (:data:`store_io.STAGING_SCHEMA`), one per kernel call. The
cold-start default is the mean un-adapted output over all users.

Multi-block models (``ModelConfig.meta_blocks = ("user", "user_x_genre")``): pass ``genres``
(:data:`CATALOGUE`, or a fixed list of genre buckets) to :func:`GenerateEmbeddings`; every kernel
call then also emits the ``U·K`` user × genre rows ``"<user_id>#<g>"`` of its users, and the job
the cold-start rows ``"__cold_start__#<g>"``, in the same staged tables
(:mod:`components.meta_embedding_gen.genre_rows`). With :data:`CATALOGUE`, the genre set is the
primary genres of every input row, computed by the job itself (a side input).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

from components.meta_embedding_gen import beam_coders, genre_rows
from components.meta_embedding_gen.support_window import support_windows
from components.meta_embedding_gen.user_batch import UserBatch, concat
from schema import features as F
from trainer import finetune
from trainer.layout import USER_HASH

beam_coders.register()

ModelLoader = Callable[[], object]
COLD_FILE = "cold.npy"
CATALOGUE = "catalogue"
"""``genres`` value of :func:`GenerateEmbeddings`: the primary genres of the input's items."""
GenreSet = Union[None, str, Sequence[int]]


def kernel_feature_keys(model) -> List[str]:
    """Encoded columns the fine-tune kernel reads: meta and global features, label [, user_hash].

    The inner loop minimises the support loss of the whole network, so the global block's
    features are needed as well as the meta block's.
    """
    lay = model.layout
    keys = list(lay.meta_feature_names) + [k for k in lay.global_feature_names
                                           if k not in lay.meta_feature_names] + [F.LABEL]
    if lay.use_user_id_in_meta and USER_HASH not in keys:
        keys.append(USER_HASH)
    return keys


def embed_users(model, batch: UserBatch, max_recent: int, aggregation: str,
                genres: Optional[np.ndarray] = None):
    """One kernel call for the users of ``batch``.

    Args:
        model: :class:`trainer.model.LimamlModel`.
        batch: U users, each with >= 1 row, time-ordered.
        max_recent: K.
        aggregation: ``"latest"`` | ``"mean"`` | ``"max"``.
        genres: ``[G_k]`` genre buckets of the user × genre rows (multi-block models only);
            None: user rows only.

    Returns:
        ``(rows: pa.Table (store_io.STAGING_SCHEMA), cold_sum float64 [E])`` where ``rows``
        holds the U user rows, then (with ``genres``) the ``U·G_k`` user × genre rows, and
        ``cold_sum`` is the sum over the users of the un-adapted output; with ``genres`` a third
        item, the sum over the users of the un-adapted genre block outputs ``[G_k, E]``.
    """
    import pyarrow as pa

    from components.meta_embedding_gen import store_io

    win = support_windows(batch, max_recent, kernel_feature_keys(model))
    emb = finetune.embeddings_from_rows(model, win.rows, win.index, win.mask, aggregation)
    meta_first = {k: win.rows[k][win.index[:, 0]] for k in model.layout.meta_feature_names}
    cold = finetune.cold_start_outputs(model, meta_first)
    rows = store_io.staging_table(win.user_ids, emb.astype(np.float32), win.size, win.last_ts)
    if genres is None:
        return rows, cold.astype(np.float64).sum(axis=0)
    keys, g_emb, g_size, g_ts = genre_rows.genre_rows(model, win, emb, genres)
    rows = pa.concat_tables([rows, store_io.staging_table(keys, g_emb, g_size, g_ts)])
    return rows, cold.astype(np.float64).sum(axis=0), genre_rows.cold_genre_sum(model, win, genres)


class GenerateDoFn(beam.DoFn):
    """Loads the meta block once per worker; turns :class:`UserBatch` es into embedding tables.

    Incoming batches are cut to each user's window (``as_of``, then the latest ``max_recent``
    rows) and buffered; every ``users_per_batch`` users make one kernel call (the bundle's last
    call may have fewer). Main output: ``pa.Table`` (:data:`store_io.STAGING_SCHEMA`) per kernel
    call. Tagged output ``"cold"``: ``(sum of the un-adapted outputs [E], users)`` per call; with
    genres, tagged output ``"cold_genre"``: ``(sum of the un-adapted genre outputs [K, E], users)``.

    Args:
        genres: None (single-block model), a fixed ``[K]`` list of genre buckets, or
            :data:`CATALOGUE` (the set arrives as the side input ``genres`` of ``process``).
    """

    def __init__(self, load_model: ModelLoader, max_recent: int, aggregation: str,
                 users_per_batch: int, as_of: Optional[int] = None, genres: GenreSet = None) -> None:
        if users_per_batch < 1:
            raise ValueError(f"users_per_batch must be >= 1, got {users_per_batch}")
        self._load_model = load_model
        self._max_recent = max_recent
        self._aggregation = aggregation
        self._users_per_batch = users_per_batch
        self._as_of = as_of
        self._genre_mode = _check_genres(genres)
        self._genres: Optional[np.ndarray] = (
            None if self._genre_mode in (None, CATALOGUE) else np.asarray(genres, np.int64))
        self._model = None
        self._keys: List[str] = []
        self._buffer: List[UserBatch] = []
        self._buffered = 0

    def setup(self) -> None:
        self._model = self._load_model()
        multi = genre_rows.has_genre_block(self._model)
        if multi and self._genre_mode is None:
            raise ValueError("the model has the user × genre block (meta_blocks "
                             f"{tuple(self._model.model_cfg.meta_blocks)}): pass genres="
                             f"{CATALOGUE!r} or a list of genre buckets to GenerateEmbeddings")
        if not multi and self._genre_mode is not None:
            raise ValueError(f"genres={self._genre_mode!r} was given but the model has no user × "
                             f"genre block (meta_blocks {tuple(self._model.model_cfg.meta_blocks)})")
        self._keys = kernel_feature_keys(self._model)
        if multi and F.GENRES not in self._keys:
            self._keys.append(F.GENRES)

    def start_bundle(self) -> None:
        self._buffer, self._buffered = [], 0

    def _run(self, batch: UserBatch) -> Iterator:
        if self._genre_mode is not None and self._genres is None:
            raise RuntimeError("the genre set side input has not arrived (process was not called)")
        out = embed_users(self._model, batch, self._max_recent, self._aggregation, self._genres)
        yield beam.pvalue.TaggedOutput("cold", (out[1], batch.num_users))
        if len(out) > 2:
            yield beam.pvalue.TaggedOutput("cold_genre", (out[2], batch.num_users))
        yield out[0]

    def process(self, batch: UserBatch, genres: Optional[np.ndarray] = None) -> Iterable:
        if genres is not None and self._genre_mode == CATALOGUE:
            self._genres = np.asarray(genres, np.int64)
        batch = batch.not_after(self._as_of).select(self._keys).latest(self._max_recent)
        if batch.num_users == 0:
            return
        self._buffer.append(batch)
        self._buffered += batch.num_users
        if self._buffered < self._users_per_batch:
            return
        whole = concat(self._buffer)
        full = whole.num_users // self._users_per_batch * self._users_per_batch
        for part in whole.take_users(0, full).split(self._users_per_batch):
            yield from self._run(part)
        rest = whole.take_users(full, whole.num_users)
        self._buffer = [rest] if rest.num_users else []
        self._buffered = rest.num_users

    def finish_bundle(self) -> Iterable:
        if not self._buffered:
            return
        whole, self._buffer, self._buffered = concat(self._buffer), [], 0
        for out in self._run(whole):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
            else:
                yield GlobalWindows.windowed_value(out)


def _check_genres(genres: GenreSet) -> GenreSet:
    """``genres`` of :func:`GenerateEmbeddings`, checked (a clear error names a bad value)."""
    if genres is None or (isinstance(genres, str) and genres == CATALOGUE):
        return genres
    if isinstance(genres, str):
        raise ValueError(f"genres={genres!r}: pass None, {CATALOGUE!r} or a list of genre buckets")
    arr = np.asarray(genres)
    if arr.ndim != 1 or (arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0)):
        raise ValueError(f"genres={genres!r}: expected a list of non-negative int genre buckets")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"genres={genres!r}: a genre bucket is listed twice")
    return "fixed"


def _sum_pairs(parts: Iterable[Tuple[np.ndarray, int]]) -> Tuple[np.ndarray, int]:
    total, count = None, 0
    for vec, n in parts:
        total = np.array(vec, dtype=np.float64) if total is None else total + vec
        count += n
    return (np.zeros(0) if total is None else total), count


def _mean(sum_count: Tuple[np.ndarray, int]) -> np.ndarray:
    total, count = sum_count
    return (total / count).astype(np.float32)


@beam.ptransform_fn
def GenerateEmbeddings(batches: beam.PCollection, load_model: ModelLoader, max_recent: int,
                       aggregation: str, users_per_batch: int, as_of: Optional[int] = None,
                       genres: GenreSet = None) -> Dict[str, beam.PCollection]:  # pylint: disable=invalid-name
    """:class:`UserBatch` es -> {"rows": Arrow tables of embeddings, "cold": [E] mean un-adapted vector}.

    Args:
        batches: PCollection of :class:`UserBatch` (every user's rows in exactly one batch).
        load_model: picklable callable returning the :class:`trainer.model.LimamlModel`.
        max_recent: K, support interactions per user.
        aggregation: ``"latest"`` | ``"mean"`` | ``"max"``.
        users_per_batch: users per kernel call (the last call of a bundle may have fewer).
        as_of: drop interactions with ``timestamp > as_of`` first (users left with none are
            skipped: the store's cold-start row serves them).
        genres: multi-block models only: :data:`CATALOGUE` (the primary genres of every input
            row) or a fixed list of genre buckets; None for a single-block model (the model is
            checked against it when loaded).

    Returns:
        ``{"rows": PCollection of pa.Table (store_io.STAGING_SCHEMA: user_id, embedding
        float32[E], support_size, last_interaction_ts), "cold": PCollection with one
        float32[E]}`` (``cold`` is empty when no user had an interaction). With genres, ``rows``
        also holds the ``"<user_id>#<g>"`` rows and one table of ``"__cold_start__#<g>"`` rows.
    """
    mode = _check_genres(genres)
    dofn = GenerateDoFn(load_model, max_recent, aggregation, users_per_batch, as_of, genres)
    genre_set = None
    if mode == CATALOGUE:
        genre_set = (batches
                     | "PrimaryGenres" >> beam.Map(genre_rows.batch_genres)
                     | "GenreSet" >> beam.CombineGlobally(genre_rows.union_genres))
    elif mode is not None:
        genre_set = batches.pipeline | "GenreSet" >> beam.Create([np.asarray(genres, np.int64)])
    side = {} if mode != CATALOGUE else {"genres": beam.pvalue.AsSingleton(genre_set)}
    tags = ("cold",) if mode is None else ("cold", "cold_genre")
    out = (batches
           | "FineTune" >> beam.ParDo(dofn, **side).with_output_types(pa.Table)
           .with_outputs(*tags, main="rows"))
    cold = (out.cold
            | "SumCold" >> beam.CombineGlobally(_sum_pairs).without_defaults()
            | "MeanCold" >> beam.Map(_mean))
    if mode is None:
        return {"rows": out.rows, "cold": cold}
    cold_genre = (out.cold_genre
                  | "SumColdGenre" >> beam.CombineGlobally(_sum_pairs).without_defaults()
                  | "ColdGenreRows" >> beam.Map(lambda s, g: genre_rows.cold_genre_table(_mean(s), g),
                                                g=beam.pvalue.AsSingleton(genre_set)))
    rows = (out.rows, cold_genre) | "WithColdGenre" >> beam.Flatten()
    return {"rows": rows, "cold": cold}


def stage_embeddings(result: Dict[str, beam.PCollection], staging_dir: str,
                     bigtable_sink: Optional[beam.DoFn] = None) -> None:
    """Adds to the pipeline the writes of :func:`GenerateEmbeddings`'s output.

    Rows go to Parquet parts ``staging_dir/part-*.parquet`` (:data:`store_io.STAGING_SCHEMA`),
    written as the Arrow tables come; the cold-start vector to ``cold.npy``. Clear the folder
    first (:func:`components.meta_embedding_gen.store_io.clear_staging`): parts of an earlier run
    would otherwise be read again. With ``bigtable_sink`` (a
    :class:`components.meta_embedding_gen.bigtable_sink.WriteBigtableRows`), every worker also
    writes its rows to Bigtable under one uncommitted attempt.

    Args:
        result: ``{"rows", "cold"}`` as returned by :func:`GenerateEmbeddings`.
        staging_dir: local or remote folder private to this run.
        bigtable_sink: optional DoFn writing each Arrow table's rows to Bigtable.
    """
    from components.meta_embedding_gen import store_io

    _ = (result["rows"]
         | "Stage" >> beam.io.WriteToParquetBatched(os.path.join(staging_dir, "part"),
                                                    store_io.STAGING_SCHEMA,
                                                    file_name_suffix=".parquet"))
    if bigtable_sink is not None:
        _ = result["rows"] | "ToBigtable" >> beam.ParDo(bigtable_sink)
    _ = result["cold"] | "StageCold" >> beam.Map(store_io.save_cold, os.path.join(staging_dir, COLD_FILE))


def now() -> int:
    """Unix seconds (one place, so tests can reason about generated_at)."""
    return int(time.time())
