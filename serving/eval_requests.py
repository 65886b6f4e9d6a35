"""Real ranking requests read from a local pipeline run's evaluation examples.

:func:`read_eval_requests` turns the run's ``EmbeddingJoin`` evaluation split into requests of
the ranker service's ``POST /v1/rank`` body shape (``limaml score``, the serving benchmark,
tests).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

from serving.run_folder import _RUN_HINT, StackError, eval_examples_uri, resolve_run


def read_eval_requests(run_dir: str, max_users: int = 5, max_candidates: int = 100,
                       min_candidates: int = 1, max_records: int = 200_000
                       ) -> List[Dict[str, Any]]:
    """Real ranking requests from a run's evaluation examples (one per user, file order).

    Each request is ``{"user_id", "user_features", "candidates"}`` with the raw features of the
    user's evaluation interactions (candidates: item id and item features).

    Args:
        run_dir: the run folder.
        max_users: most requests.
        max_candidates: most candidates per request.
        min_candidates: skip users with fewer evaluation interactions.
        max_records: most evaluation examples read.

    Raises:
        StackError: no run or no evaluation examples.
    """
    import glob

    import tensorflow as tf

    from schema import features as F

    folder = resolve_run(run_dir)
    uri = eval_examples_uri(folder.metadata_path)
    files = sorted(glob.glob(os.path.join(uri, "Split-eval", "*")))
    if not files:
        raise StackError(f"no evaluation examples under {uri}/Split-eval; {_RUN_HINT}")
    by_user: Dict[str, Dict[str, Any]] = {}
    order: List[str] = []
    item_keys = (F.ITEM_ID,) + tuple(F.ITEM_FEATURES)
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(max_records)
    for serialized in records.as_numpy_iterator():
        feats = tf.train.Example.FromString(serialized).features.feature
        raw = {k: _feature_value(feats[k], F.CANONICAL_COLUMNS[k])
               for k in (F.USER_ID,) + tuple(F.USER_FEATURES) + item_keys if k in feats}
        user = raw.get(F.USER_ID)
        if user is None:
            continue
        req = by_user.get(user)
        if req is None:
            req = {"user_id": user,
                   "user_features": {k: raw[k] for k in F.USER_FEATURES if k in raw},
                   "candidates": []}
            by_user[user] = req
            order.append(user)
        if len(req["candidates"]) < max_candidates:
            req["candidates"].append({k: raw[k] for k in item_keys if k in raw})
    out = [by_user[u] for u in order if len(by_user[u]["candidates"]) >= min_candidates]
    return out[:max_users]


def _feature_value(feature: Any, kind: str) -> Any:
    if kind == "str":
        return feature.bytes_list.value[0].decode("utf-8") if feature.bytes_list.value else None
    if kind == "int64":
        return int(feature.int64_list.value[0]) if feature.int64_list.value else None
    return float(feature.float_list.value[0]) if feature.float_list.value else None
