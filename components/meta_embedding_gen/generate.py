"""Beam logic of meta-embedding generation (MEG).

Per user: the most recent ``max_recent`` interactions (as of ``as_of``) are the support set; the
trainer's batched fine-tune kernel adapts the meta block for thousands of users per call and
aggregates their outputs (latest / mean / max). The cold-start default is the mean un-adapted
output over all users.

Input of :func:`GenerateEmbeddings`: ``(user_id, [row, ...])`` with the rows sorted by time, each
row a dict of encoded numpy values (every model feature, ``label``, ``timestamp``, ``user_id`` and
``user_hash``: what Transform outputs, see :mod:`trainer.layout`).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from components.common.examples_io import stack_users
from schema import features as F
from trainer import finetune, tasks
from trainer.layout import MASK, SUPPORT, USER_HASH

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


def support_sets(users: List[Tuple[str, list]], max_recent: int, feature_keys: List[str]):
    """Padded support sets of a batch of users (their latest ``max_recent`` rows).

    Args:
        users: ``U`` pairs ``(user_id, rows sorted by time)``, user ids unique, rows non-empty.
        max_recent: K.
        feature_keys: encoded columns to gather.

    Returns:
        ``(support {feature: [U, K, ...]}, mask [U, K] float32, user ids [U] object,
        support sizes [U] int64, last interaction timestamps [U] int64)``.
    """
    wanted = list(dict.fromkeys(list(feature_keys) + [F.TIMESTAMP]))
    keys, table = stack_users(users, wanted)
    built = tasks.build_support_sets({**table, "__user": keys}, "__user", max_recent,
                                     feature_keys=wanted)
    support = built[SUPPORT]
    mask = support.pop(MASK)
    ts = support.pop(F.TIMESTAMP).reshape(mask.shape)
    last_ts = np.where(mask > 0, ts, 0).max(axis=1).astype(np.int64)
    return support, mask, np.asarray(built["user"], dtype=object), np.asarray(built["count"]), last_ts


class GenerateDoFn(beam.DoFn):
    """Loads the meta block once per worker and turns batches of users into embedding rows.

    Main output: ``{"user_id", "embedding" float32[E], "support_size", "last_interaction_ts"}``
    per user. Tagged output ``"cold"``: ``(sum over the batch's users of the un-adapted output
    [E], number of users)``.
    """

    def __init__(self, load_model: ModelLoader, max_recent: int, aggregation: str) -> None:
        self._load_model = load_model
        self._max_recent = max_recent
        self._aggregation = aggregation
        self._model = None

    def setup(self) -> None:
        self._model = self._load_model()

    def process(self, users: List[Tuple[str, list]]) -> Iterable:
        yield from self._generate(users)

    def _generate(self, users: List[Tuple[str, list]]) -> Iterator:
        """Runs the kernel once for ``users``; yields their rows and one ``cold`` tagged output."""
        model = self._model
        support, mask, user_ids, counts, last_ts = support_sets(
            users, self._max_recent, kernel_feature_keys(model))
        emb = finetune.generate_meta_embeddings(model, support, mask, self._aggregation).numpy()
        meta_first = {k: support[k][:, 0] for k in model.layout.meta_feature_names}
        cold = finetune.cold_start_embedding(model, meta_first).numpy()
        yield beam.pvalue.TaggedOutput("cold", (cold.astype(np.float64).sum(axis=0), cold.shape[0]))
        emb = emb.astype(np.float32)
        for i in range(len(user_ids)):  # output records only; the kernel ran once for the batch
            yield {"user_id": str(user_ids[i]), "embedding": emb[i],
                   "support_size": int(counts[i]), "last_interaction_ts": int(last_ts[i])}


class BatchedGenerateDoFn(GenerateDoFn):
    """:class:`GenerateDoFn` on single users: buffers ``users_per_batch`` of them per kernel call.

    Batching inside the DoFn (instead of ``beam.BatchElements`` in front of it) keeps the large
    batch from being an element: Beam samples element sizes by encoding them, and encoding a
    batch of thousands of users' numpy rows cost more than the kernel itself.
    """

    def __init__(self, load_model: ModelLoader, max_recent: int, aggregation: str,
                 users_per_batch: int) -> None:
        super().__init__(load_model, max_recent, aggregation)
        if users_per_batch < 1:
            raise ValueError(f"users_per_batch must be >= 1, got {users_per_batch}")
        self._users_per_batch = users_per_batch
        self._buffer: List[Tuple[str, list]] = []

    def start_bundle(self) -> None:
        self._buffer = []

    def process(self, user: Tuple[str, list]) -> Iterable:  # pylint: disable=arguments-renamed
        self._buffer.append(user)
        if len(self._buffer) >= self._users_per_batch:
            users, self._buffer = self._buffer, []
            yield from self._generate(users)

    def finish_bundle(self) -> Iterable:
        if not self._buffer:
            return
        users, self._buffer = self._buffer, []
        for out in self._generate(users):
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


def _not_after(item, as_of: Optional[int], max_recent: Optional[int] = None):
    """Keeps a user's rows with ``timestamp <= as_of`` (all if None), then the last ``max_recent``."""
    user, rows = item
    if as_of is not None:
        rows = [r for r in rows if int(r[F.TIMESTAMP]) <= as_of]
    if max_recent is not None:
        rows = rows[-max_recent:]
    return [(user, rows)] if len(rows) else []


def _mean(sum_count: Tuple[np.ndarray, int]) -> np.ndarray:
    total, count = sum_count
    return (total / count).astype(np.float32)


@beam.ptransform_fn
def GenerateEmbeddings(users: beam.PCollection, load_model: ModelLoader, max_recent: int,
                       aggregation: str, users_per_batch: int, as_of: Optional[int] = None
                       ) -> Dict[str, beam.PCollection]:  # pylint: disable=invalid-name
    """``(user, rows sorted by time)`` -> {"rows": embedding dicts, "cold": [E] mean un-adapted vector}.

    Args:
        users: PCollection of ``(user_id, [row dict, ...])``, rows sorted by timestamp.
        load_model: picklable callable returning the :class:`trainer.model.LimamlModel`.
        max_recent: K, support interactions per user.
        aggregation: ``"latest"`` | ``"mean"`` | ``"max"``.
        users_per_batch: users per kernel call (the last call of a bundle may have fewer).
        as_of: drop interactions with ``timestamp > as_of`` first (users left with none are
            skipped).

    Returns:
        ``{"rows": PCollection of dicts (user_id, embedding float32[E], support_size,
        last_interaction_ts), "cold": PCollection with one float32[E]}`` (``cold`` is empty when
        no user had an interaction).
    """
    out = (users
           | "AsOf" >> beam.FlatMap(_not_after, as_of, max_recent)
           | "FineTune" >> beam.ParDo(BatchedGenerateDoFn(
               load_model, max_recent, aggregation, users_per_batch)).with_outputs("cold", main="rows"))
    cold = (out.cold
            | "SumCold" >> beam.CombineGlobally(_sum_pairs).without_defaults()
            | "MeanCold" >> beam.Map(_mean))
    return {"rows": out.rows, "cold": cold}


def stage_embeddings(result: Dict[str, beam.PCollection], staging_dir: str) -> None:
    """Adds to the pipeline the writes of :func:`GenerateEmbeddings`'s output to ``staging_dir``.

    Rows go to Parquet parts ``part-*.parquet`` (:data:`store_io.STAGING_SCHEMA`), the cold-start
    vector to ``cold.npy``. Clear the folder first
    (:func:`components.meta_embedding_gen.store_io.clear_staging`): parts of an earlier run would
    otherwise be read again.

    Args:
        result: ``{"rows", "cold"}`` as returned by :func:`GenerateEmbeddings`.
        staging_dir: local or remote folder private to this run.
    """
    from components.meta_embedding_gen import store_io

    _ = (result["rows"]
         | "ToStaging" >> beam.Map(store_io.to_staging_record)
         | "Stage" >> beam.io.WriteToParquet(os.path.join(staging_dir, "part"), store_io.STAGING_SCHEMA,
                                             file_name_suffix=".parquet"))
    _ = result["cold"] | "StageCold" >> beam.Map(store_io.save_cold, os.path.join(staging_dir, COLD_FILE))


def now() -> int:
    """Unix seconds (one place, so tests can reason about generated_at)."""
    return int(time.time())
