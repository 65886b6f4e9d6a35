"""Beam logic of meta-embedding generation (MEG).

Per user: the most recent ``max_recent`` interactions (as of ``as_of``) are the support set; the
trainer's batched fine-tune kernel adapts the meta block for thousands of users per call and
aggregates their outputs (latest / mean / max). The cold-start default is the mean un-adapted
output over all users.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
import numpy as np

from components.common.examples_io import stack_users
from schema import features as F
from trainer import finetune, tasks
from trainer.layout import MASK, SUPPORT, USER_HASH

ModelLoader = Callable[[], object]


def support_sets(users: List[Tuple[str, list]], max_recent: int, feature_keys: List[str]):
    """Padded support sets ``{feature: [U, K, ...]}``, mask ``[U, K]``, user ids and last timestamps."""
    keys, table = stack_users(users)
    built = tasks.build_support_sets({**table, "__user": keys}, "__user", max_recent,
                                     feature_keys=feature_keys + [F.TIMESTAMP])
    support = built[SUPPORT]
    mask = support.pop(MASK)
    ts = support.pop(F.TIMESTAMP).reshape(mask.shape)
    last_ts = np.where(mask > 0, ts, 0).max(axis=1).astype(np.int64)
    return support, mask, np.asarray(built["user"], dtype=object), np.asarray(built["count"]), last_ts


class GenerateDoFn(beam.DoFn):
    """Loads the meta block once per worker and turns batches of users into embedding rows."""

    def __init__(self, load_model: ModelLoader, max_recent: int, aggregation: str) -> None:
        self._load_model = load_model
        self._max_recent = max_recent
        self._aggregation = aggregation
        self._model = None

    def setup(self) -> None:
        self._model = self._load_model()

    def process(self, users: List[Tuple[str, list]]) -> Iterable:
        model = self._model
        feature_keys = list(model.layout.meta_feature_names) + [F.LABEL] + (
            [USER_HASH] if model.layout.use_user_id_in_meta else [])
        support, mask, user_ids, counts, last_ts = support_sets(users, self._max_recent, feature_keys)
        emb = finetune.generate_meta_embeddings(model, support, mask, self._aggregation).numpy()
        cold = finetune.cold_start_embedding(model, {k: v[:, 0] for k, v in support.items()}).numpy()
        yield beam.pvalue.TaggedOutput("cold", (cold.sum(axis=0), cold.shape[0]))
        for i in range(len(user_ids)):
            yield {"user_id": user_ids[i], "embedding": emb[i].astype(np.float32),
                   "support_size": int(counts[i]), "last_interaction_ts": int(last_ts[i])}


def _sum_pairs(parts: Iterable[Tuple[np.ndarray, int]]) -> Tuple[np.ndarray, int]:
    parts = list(parts)
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def _not_after(item, as_of: Optional[int]):
    user, rows = item
    if as_of is None:
        return [item]
    rows = [r for r in rows if int(r[F.TIMESTAMP]) <= as_of]
    return [(user, rows)] if rows else []


@beam.ptransform_fn
def GenerateEmbeddings(users: beam.PCollection, load_model: ModelLoader, max_recent: int,
                       aggregation: str, users_per_batch: int, as_of: Optional[int] = None
                       ) -> Dict[str, beam.PCollection]:  # pylint: disable=invalid-name
    """``(user, rows sorted by time)`` -> {"rows": embedding dicts, "cold": [E] mean un-adapted vector}."""
    out = (users
           | "AsOf" >> beam.FlatMap(_not_after, as_of)
           | "BatchUsers" >> beam.BatchElements(min_batch_size=min(64, users_per_batch),
                                                max_batch_size=users_per_batch)
           | "FineTune" >> beam.ParDo(GenerateDoFn(load_model, max_recent, aggregation)).with_outputs(
               "cold", main="rows"))
    cold = (out.cold
            | "SumCold" >> beam.CombineGlobally(_sum_pairs).without_defaults()
            | "MeanCold" >> beam.Map(lambda sc: (sc[0] / sc[1]).astype(np.float32)))
    return {"rows": out.rows, "cold": cold}


def now() -> int:
    """Unix seconds (one place, so tests can reason about generated_at)."""
    return int(time.time())
