"""Refresh of a multi-block model's embeddings: which rows are carried, which genres are made.

A stored version of a multi-block model holds, per user ``u``, the row ``u`` and the rows
``u#g`` (:mod:`embeddings.entity_keys`), plus the cold-start rows ``__cold_start__`` and
``__cold_start__#g``. A refresh regenerates every row of a changed user (its user row *and* all its
genre rows, with the stored version's genre set, so the version keeps one catalogue) and carries
every other row over unchanged, the cold-start rows included; the MEG job's own cold-start
genre rows are used only when the stored version has none.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Union

import numpy as np
import pandas as pd

from embeddings import entity_keys
from embeddings.record import COLD_START_USER, EmbeddingBatch


def stored_genres(keys: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The genre set of a stored version: the ``g`` of its ``__cold_start__#g`` rows, sorted
    (None when it has none: a single-block version, or nothing stored)."""
    if keys is None:
        return None
    keys = np.asarray(keys, dtype=object)
    prefix = COLD_START_USER + entity_keys.SEPARATOR
    mine = [k[len(prefix):] for k in keys.astype(str) if k.startswith(prefix)]
    if not mine:
        return None
    return np.array(sorted(int(g) for g in mine), np.int64)


def genres_for_refresh(multi_block: bool, keys: Optional[np.ndarray]) -> Union[None, str, np.ndarray]:
    """``genres`` of :func:`generate.GenerateEmbeddings` for a refresh: None (single block), the
    stored version's genre set, or the catalogue of the refresh input when nothing is stored."""
    from components.meta_embedding_gen.generate import CATALOGUE

    if not multi_block:
        return None
    stored = stored_genres(keys)
    return CATALOGUE if stored is None else stored


def carried(keys: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """bool ``[N]``: stored rows kept as they are (rows of users not in ``changed``, whatever
    their kind)."""
    return ~pd.Index(entity_keys.owner_users(keys)).isin(pd.Index(np.asarray(changed, dtype=object)))


def without_cold_genre_rows(batches: Iterable[EmbeddingBatch], drop: bool) -> Iterator[EmbeddingBatch]:
    """The staged batches, without their ``__cold_start__#g`` rows when ``drop`` (the stored
    version's cold-start genre rows are carried over instead)."""
    for batch in batches:
        if drop:
            keep = entity_keys.owner_users(batch.user_ids) != COLD_START_USER
            if not keep.all():
                idx = np.flatnonzero(keep)
                if idx.size == 0:
                    continue
                batch = EmbeddingBatch(user_ids=batch.user_ids[idx], embeddings=batch.embeddings[idx],
                                       support_size=batch.support_size[idx],
                                       last_interaction_ts=batch.last_interaction_ts[idx],
                                       model_version=batch.model_version,
                                       generated_at=batch.generated_at)
        yield batch

