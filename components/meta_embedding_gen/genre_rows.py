"""MEG of a multi-block model: the user × primary-genre rows of every user of a kernel call.

For a model with the user × genre block (``ModelConfig.meta_blocks = ("user", "user_x_genre")``,
:mod:`trainer.genre_block`), each refreshed user ``u`` gets, besides its user row ``e_u``, one row
per genre ``g`` of the catalogue's primary-genre set ``G_cat`` (``K = |G_cat|``), keyed
``"<u>#<g>"`` (:mod:`embeddings.entity_keys`)::

    e_u,g = f_g([x_meta,u, one-hot(g)]; θ_g,(u,g))                                   [E]
    θ_g,(u,g) = θ_g adapted on u's support rows of primary genre g (same window as e_u),
                with e_u held in front of the genre block's output; θ_g where u has none

exactly :func:`trainer.finetune.generate_genre_embeddings` (the un-adapted output where the user
has no support row of ``g``: user-specific, through the user's meta features). The ``K`` genres
of all ``U`` users are one batch of ``U·K`` subtasks (no loop over users nor genres); calls are cut
into chunks of at most :data:`MAX_ENTITIES` entities (a few users each) to bound memory.

Cold start: ``"__cold_start__#<g>"`` = mean over the MEG users of the un-adapted genre block
output for ``g`` (as ``"__cold_start__"`` is the mean un-adapted user block output).

``G_cat`` is the set of primary genres of the items in MEG's input (every row, before ``as_of``),
or a fixed list the caller gives (refresh keeps the stored version's set).
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import numpy as np
import tensorflow as tf

from components.meta_embedding_gen.support_window import SupportWindows
from components.meta_embedding_gen.user_batch import UserBatch
from embeddings import entity_keys
from schema import features as F
from trainer import finetune
from trainer.flat_call import FlatCall

MAX_ENTITIES = 8192
"""Most (user, genre) subtasks per call of the genre kernel."""

_FN_CACHE: Dict[int, object] = {}


def has_genre_block(model) -> bool:
    """Whether ``model`` (:class:`trainer.model.LimamlModel`) has the user × genre block."""
    return bool(getattr(model, "genre_params", None))


def primary_genres(multi_hot: np.ndarray) -> np.ndarray:
    """Primary genre bucket ``[...]`` int64 of genre multi-hots ``[..., G]`` (lowest set bucket;
    0 without genres), the numpy twin of :func:`trainer.model.primary_genre`."""
    return np.argmax(np.asarray(multi_hot) > 0, axis=-1).astype(np.int64)


def batch_genres(batch: UserBatch) -> np.ndarray:
    """Sorted distinct primary genres ``[k]`` of a batch's rows (every row, any time)."""
    if F.GENRES not in batch.columns:
        raise KeyError(f"user batch lacks the encoded {F.GENRES!r} column the user × genre block "
                       f"reads; it has {sorted(batch.columns)}")
    return np.unique(primary_genres(batch.columns[F.GENRES]))


def union_genres(parts: Iterable[np.ndarray]) -> np.ndarray:
    """Sorted union of genre sets (a Beam combine function; empty input -> empty set)."""
    parts = [np.asarray(p, np.int64).reshape(-1) for p in parts]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _kernel(model):
    """The genre kernel of ``model`` as one traced function (cached per model)."""
    fn = _FN_CACHE.get(id(model))
    if fn is None:
        fn = FlatCall(tf.function(
            lambda support, mask, genres, user_emb: finetune.generate_genre_embeddings(
                model, support, mask, genres, user_emb),
            reduce_retracing=True, autograph=False))
        _FN_CACHE[id(model)] = fn
    return fn


def genre_embeddings(model, win: SupportWindows, user_emb: np.ndarray, genres: np.ndarray
                     ) -> np.ndarray:
    """``e_u,g`` of every user of the windows and every genre, ``[U, K, E]`` float32.

    Args:
        model: the trained multi-block model.
        win: the users' support windows (``support`` holds the kernel's columns, genres too).
        user_emb: ``[U, E]`` their user-block embeddings (held fixed in front).
        genres: ``[K]`` genre buckets.
    """
    u, k = win.mask.shape[0], int(genres.shape[0])
    e = model.model_cfg.embedding_dim
    out = np.zeros((u, k, e), np.float32)
    if u == 0 or k == 0:
        return out
    fn = _kernel(model)
    step = max(1, MAX_ENTITIES // k)  # users per call
    for lo in range(0, u, step):
        hi = min(u, lo + step)
        sup = {name: tf.constant(v[lo:hi]) for name, v in win.support.items()}
        g = tf.constant(np.broadcast_to(genres[None, :], (hi - lo, k)), tf.int64)
        out[lo:hi] = fn(sup, tf.constant(win.mask[lo:hi]), g,
                        tf.constant(user_emb[lo:hi], model.dtype)).numpy()
    return out


def cold_genre_sum(model, win: SupportWindows, genres: np.ndarray) -> np.ndarray:
    """Sum over the users of the un-adapted genre block output per genre, ``[K, E]`` float64.

    Row 0 of each window carries the user's meta features (as for the user block's cold start).
    """
    u, k = win.mask.shape[0], int(genres.shape[0])
    if u == 0 or k == 0:
        return np.zeros((k, model.model_cfg.embedding_dim), np.float64)
    name, buckets = model.layout.global_multi_hot[0]
    first = {c: np.repeat(v[:, 0], k, axis=0) for c, v in win.support.items()
             if c in model.layout.meta_feature_names}
    first[name] = np.eye(buckets, dtype=np.float32)[np.tile(genres, u)]       # [U·K, G]
    rows = None  # the cold start meets the zero (user, genre) row, as a pair never trained
    if getattr(model, "genre_user_emb", None) is not None:
        rows = tf.zeros([u * k, model.model_cfg.user_id_embedding_dim], model.dtype)
    emb = model.genre_embedding({c: tf.constant(v) for c, v in first.items()}, rows).numpy()
    return emb.reshape(u, k, -1).astype(np.float64).sum(axis=0)


def genre_support_sizes(win: SupportWindows, genres: np.ndarray) -> np.ndarray:
    """``[U, K]`` int64: each user's support rows of each genre (0: the row is un-adapted)."""
    g = primary_genres(win.support[F.GENRES])                                 # [U, S]
    same = g[:, None, :] == np.asarray(genres, np.int64)[None, :, None]       # [U, K, S]
    return (same * (win.mask[:, None, :] > 0)).sum(axis=2).astype(np.int64)


def genre_rows(model, win: SupportWindows, user_emb: np.ndarray, genres: np.ndarray
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``U·K`` user × genre rows of a kernel call, user-major.

    Returns:
        ``(keys object str [U·K], embeddings float32 [U·K, E], support_size int64 [U·K],
        last_interaction_ts int64 [U·K])``; ``last_interaction_ts`` is the user's (what refresh
        compares).
    """
    entity_keys.check_user_ids(win.user_ids)
    k = int(genres.shape[0])
    emb = genre_embeddings(model, win, user_emb, genres)
    keys = entity_keys.genre_keys(win.user_ids, genres)
    return (keys, emb.reshape(-1, emb.shape[-1]), genre_support_sizes(win, genres).reshape(-1),
            np.repeat(np.asarray(win.last_ts, np.int64), k))


def cold_genre_table(mean: np.ndarray, genres: np.ndarray):
    """The cold-start rows ``"__cold_start__#<g>"`` as a staging table (:data:`store_io.STAGING_SCHEMA`).

    Args:
        mean: ``[K, E]`` mean un-adapted genre block outputs.
        genres: ``[K]`` their genres.
    """
    from components.meta_embedding_gen import store_io

    genres = np.asarray(genres, np.int64).reshape(-1)
    mean = np.asarray(mean, np.float32).reshape(genres.shape[0], -1)
    keys = np.array([entity_keys.cold_genre_key(g) for g in genres], dtype=object)
    zeros = np.zeros(genres.shape[0], np.int64)
    return store_io.staging_table(keys, mean, zeros, zeros)
