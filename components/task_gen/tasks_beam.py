"""Beam logic of TaskGen: per-user grouped rows -> serialized task records, by split.

Tasks are cut per ``TaskConfig.entity`` (:func:`trainer.tasks.build_tasks`): per user, or per
user × primary genre. Rows arrive grouped by user, so every entity of a user is built in the same
batch. A record's ``user_id`` holds the task key (the entity key, ``"<user_id>#<genre>"`` for
``user_x_genre``), its ``user_hash`` the owning user's hash; the train/eval split is drawn per
user, so all entities of a user fall in the same split.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import apache_beam as beam
import numpy as np

from components.common.examples_io import stack_users
from limaml.config import TaskConfig
from limaml.data.protocols import stable_user_hash
from schema import features as F
from trainer import task_record, tasks
from trainer.layout import USER_HASH

EVAL_PERCENT = 10


def eval_users(user_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """True for users whose tasks go to the eval split (stable hash, ~EVAL_PERCENT %)."""
    return (stable_user_hash(np.asarray(user_ids, dtype=object), seed + 17) % np.uint64(100)) < EVAL_PERCENT


def build_records(users: List[Tuple[str, list]], task_cfg: TaskConfig) -> Iterable[Tuple[str, bytes]]:
    """Builds the tasks of a batch of users in one vectorised call and serialises them.

    Args:
        users: ``[(user_id, rows sorted by time)]``.
        task_cfg: task shape and entity.

    Yields:
        ``(split, serialized task record)``.
    """
    yield from table_records(*stack_users(users), task_cfg)


def table_records(keys: np.ndarray, table: Dict[str, np.ndarray], task_cfg: TaskConfig
                  ) -> Iterable[Tuple[str, bytes]]:
    """:func:`build_records` of users already stacked: ``keys`` ``[N]`` the user of each row,
    ``table`` ``{column: [N, ...]}`` grouped by user, time-ordered within each user."""
    if len(keys) == 0:
        return
    feature_keys = [k for k in table if k not in (F.USER_ID, USER_HASH)]
    built = tasks.build_tasks({**table, "__user": keys}, "__user", task_cfg, feature_keys=feature_keys)
    owners = np.asarray(built["user"], dtype=object)
    if owners.size == 0:
        return
    uniq, first = np.unique(keys, return_index=True)
    hashes = table[USER_HASH].reshape(len(keys), -1)[first[np.searchsorted(uniq, owners)], 0].astype(np.int64)
    records = task_record.encode_tasks(built, list(built["entity"]), list(hashes))
    is_eval = eval_users(owners)
    for rec, ev in zip(records, is_eval):
        yield ("eval" if ev else "train"), rec


@beam.ptransform_fn
def BuildTasksFromBatches(batches: beam.PCollection, task_cfg: TaskConfig, users_per_batch: int = 512
                          ) -> beam.PCollection:  # pylint: disable=invalid-name
    """:class:`~components.meta_embedding_gen.user_batch.UserBatch` per user bucket ->
    ``(split, record)``, ``users_per_batch`` users per vectorised call (so the padded task
    tensors stay bounded by the piece, not the bucket)."""
    def records(batch):
        for lo in range(0, batch.num_users, users_per_batch):
            piece = batch.take_users(lo, min(batch.num_users, lo + users_per_batch))
            yield from table_records(piece.columns[F.USER_ID], piece.columns, task_cfg)
    return batches | "Build" >> beam.FlatMap(records)
