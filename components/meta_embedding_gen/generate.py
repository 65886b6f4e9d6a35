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
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from components.meta_embedding_gen.support_window import support_windows
from components.meta_embedding_gen.user_batch import UserBatch, concat
from schema import features as F
from trainer import finetune
from trainer.layout import USER_HASH

ModelLoader = Callable[[], object]
COLD_FILE = "cold.npy"


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


def embed_users(model, batch: UserBatch, max_recent: int, aggregation: str):
    """One kernel call for the users of ``batch``.

    Args:
        model: :class:`trainer.model.LimamlModel`.
        batch: U users, each with >= 1 row, time-ordered.
        max_recent: K.
        aggregation: ``"latest"`` | ``"mean"`` | ``"max"``.

    Returns:
        ``(rows: pa.Table of U rows (store_io.STAGING_SCHEMA), cold_sum float64 [E])`` where
        ``cold_sum`` is the sum over the users of the un-adapted output.
    """
    from components.meta_embedding_gen import store_io

    win = support_windows(batch, max_recent, kernel_feature_keys(model))
    emb = finetune.generate_meta_embeddings(model, win.support, win.mask, aggregation).numpy()
    meta_first = {k: win.support[k][:, 0] for k in model.layout.meta_feature_names}
    cold = finetune.cold_start_embedding(model, meta_first).numpy()
    rows = store_io.staging_table(win.user_ids, emb.astype(np.float32), win.size, win.last_ts)
    return rows, cold.astype(np.float64).sum(axis=0)


class GenerateDoFn(beam.DoFn):
    """Loads the meta block once per worker; turns :class:`UserBatch` es into embedding tables.

    Incoming batches are cut to each user's window (``as_of``, then the latest ``max_recent``
    rows) and buffered; every ``users_per_batch`` users make one kernel call (the bundle's last
    call may have fewer). Main output: ``pa.Table`` (:data:`store_io.STAGING_SCHEMA`) per kernel
    call. Tagged output ``"cold"``: ``(sum of the un-adapted outputs [E], users)`` per call.
    """

    def __init__(self, load_model: ModelLoader, max_recent: int, aggregation: str,
                 users_per_batch: int, as_of: Optional[int] = None) -> None:
        if users_per_batch < 1:
            raise ValueError(f"users_per_batch must be >= 1, got {users_per_batch}")
        self._load_model = load_model
        self._max_recent = max_recent
        self._aggregation = aggregation
        self._users_per_batch = users_per_batch
        self._as_of = as_of
        self._model = None
        self._keys: List[str] = []
        self._buffer: List[UserBatch] = []
        self._buffered = 0

    def setup(self) -> None:
        self._model = self._load_model()
        self._keys = kernel_feature_keys(self._model)

    def start_bundle(self) -> None:
        self._buffer, self._buffered = [], 0

    def _run(self, batch: UserBatch) -> Iterator:
        rows, cold_sum = embed_users(self._model, batch, self._max_recent, self._aggregation)
        yield beam.pvalue.TaggedOutput("cold", (cold_sum, batch.num_users))
        yield rows

    def process(self, batch: UserBatch) -> Iterable:
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
                       aggregation: str, users_per_batch: int, as_of: Optional[int] = None
                       ) -> Dict[str, beam.PCollection]:  # pylint: disable=invalid-name
    """:class:`UserBatch` es -> {"rows": Arrow tables of embeddings, "cold": [E] mean un-adapted vector}.

    Args:
        batches: PCollection of :class:`UserBatch` (every user's rows in exactly one batch).
        load_model: picklable callable returning the :class:`trainer.model.LimamlModel`.
        max_recent: K, support interactions per user.
        aggregation: ``"latest"`` | ``"mean"`` | ``"max"``.
        users_per_batch: users per kernel call (the last call of a bundle may have fewer).
        as_of: drop interactions with ``timestamp > as_of`` first (users left with none are
            skipped: the store's cold-start row serves them).

    Returns:
        ``{"rows": PCollection of pa.Table (store_io.STAGING_SCHEMA: user_id, embedding
        float32[E], support_size, last_interaction_ts), "cold": PCollection with one
        float32[E]}`` (``cold`` is empty when no user had an interaction).
    """
    out = (batches
           | "FineTune" >> beam.ParDo(GenerateDoFn(
               load_model, max_recent, aggregation, users_per_batch, as_of)).with_outputs("cold", main="rows"))
    cold = (out.cold
            | "SumCold" >> beam.CombineGlobally(_sum_pairs).without_defaults()
            | "MeanCold" >> beam.Map(_mean))
    return {"rows": out.rows, "cold": cold}


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
