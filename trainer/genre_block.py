"""The user × genre meta block: one more task entity, adapted per (user, primary genre).

LiMAML (arXiv:2403.00803, §6 future work) names tasks finer than a member (member × notification
type) and models with several meta blocks, because one member vector cannot hold type-specific
taste. Here the second entity is user × the item's primary genre.

Entity of a row: ``(user, g)`` with ``g = argmax(genres multi-hot)``, the lowest genre hash
bucket the item carries (a fixed choice; an item listed under several genres counts under one).

For a task (support ``[tasks, S]`` earlier rows, query ``[tasks, Q]`` later rows of one user) and
each query position q with genre ``g_q``, the *genre subtask* is the user's support rows of that
genre (same time order, no query row)::

    m_sub[t, q, s] = m_support[t, s] · [g_s(t, s) = g_q(t, q)]                 [tasks, Q, S]

The genre block f_g(x_g; θ_g), ``x_g = [meta input, one-hot(g)]``, is adapted on each subtask
(the functional inner loop of :func:`trainer.maml.adapt`, with the user block's per-sample
embeddings e_user fixed in front of its output), and the query row is scored with
``[e_user, f_g(x_g,q; θ_g,(t,q))]``. A subtask without rows keeps θ_g: the user × genre
embedding falls back to the genre block's un-adapted output for that user and genre (and the
user embedding, always present, to its own cold start).

With ``ModelConfig.genre_row_buckets`` the genre block also reads the pair's own row
``r_(u,g)`` (``x_g = [meta input, one-hot(g), r_(u,g)]``), fitted on every row of the pair by
pre-training and the outer loop and adapted in the subtask's inner loop, as the user block's
user row; a pair never seen in training meets the zero row.

Shapes: ``T`` tasks, ``S`` support, ``Q`` query, ``E`` embedding width, ``G`` genre buckets.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import tensorflow as tf

from schema import features
from trainer.layout import MASK, USER_HASH
from trainer.maml import adapt
from trainer.model import USER_ROW, LimamlModel, meta_forward
from trainer.model import primary_genre as model_primary_genre

Features = Mapping[str, tf.Tensor]


def primary_genre(feats: Features) -> tf.Tensor:
    """Primary genre bucket ``[...]`` (int64) of rows with genres ``[..., G]``
    (:func:`trainer.model.primary_genre`)."""
    return model_primary_genre(feats[features.GENRES])


def subtask_supports(support: Features, genres: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Each (task, genre) pair's support: the task's support rows of that genre.

    Args:
        support: ``{feature: [T, S, ...], "mask": [T, S]}`` (genres multi-hot included).
        genres: ``[T, K]`` genre bucket of K entities per task (e.g. the query rows' genres).

    Returns:
        ``{feature: [T·K, S, ...], "mask": [T·K, S]}``, entity (t, k) at row ``t·K + k``.
    """
    k = tf.shape(genres)[1]
    out = {name: tf.repeat(v, k, axis=0) for name, v in support.items() if name != MASK}
    same = tf.cast(tf.equal(primary_genre(support)[:, None, :],
                            tf.cast(genres, tf.int64)[:, :, None]), support[MASK].dtype)
    mask = support[MASK][:, None, :] * same                                    # [T, K, S]
    out[MASK] = tf.reshape(mask, [-1, tf.shape(mask)[2]])
    return out


def subtask_rows(model: LimamlModel, support: Features, genres: tf.Tensor) -> Optional[tf.Tensor]:
    """The (user, genre) rows of the subtasks of :func:`subtask_supports`, ``[T·K, d]``
    (None without a (user, genre) table, ``ModelConfig.genre_row_buckets``).

    Args:
        support: ``{feature: [T, S, ...]}`` with ``user_hash`` (one user per task).
        genres: ``[T, K]`` the subtasks' genre buckets.
    """
    if model.genre_user_emb is None:
        return None
    k = tf.shape(genres)[1]
    users = tf.repeat(support[USER_HASH][:, 0], k, axis=0)                    # [T·K]
    return model.genre_rows(users, tf.reshape(genres, [-1]))


def start_params(model: LimamlModel, rows: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
    """θ_g^0 of N subtasks: the shared weights and, with a (user, genre) table, the subtasks'
    starting rows ``rows [N, d]``."""
    params = dict(model.genre_params)
    if rows is not None:
        params[USER_ROW] = rows
    return params


def genre_slot(model: LimamlModel, theta: Features, x: tf.Tensor,
               rows: Optional[tf.Tensor] = None) -> tf.Tensor:
    """The genre slot ``[N, n, E]`` of N entities scored on inputs ``x`` ``[N, n, D + G]``:
    f_g(x; θ_(n)) with adapted ``theta`` (:func:`adapt_genre_block`), or with
    ``genre_combine="residual"`` the change f_g(x; θ_(n)) − f_g(x; θ_g^0) (``rows``: the
    subtasks' starting rows, as passed to :func:`adapt_genre_block`)."""
    act = model.model_cfg.activation
    emb = meta_forward(theta, x, act)
    if model.model_cfg.genre_combine == "residual":
        emb = emb - meta_forward(start_params(model, rows), x, act)
    return emb


def adapt_genre_block(model: LimamlModel, sub_support: Features, user_emb: tf.Tensor, steps: int,
                      first_order: bool = False, rows: Optional[tf.Tensor] = None
                      ) -> Dict[str, tf.Tensor]:
    """θ_g adapted on every subtask, ``{w_l: [N, ...], b_l: [N, ...](, user_row: [N, d])}``.

    θ_g,(n)^{j+1} = θ_g,(n)^j − α ρ_n ∇ L_support,n([e_user, f_g(x_g; θ_g,(n)^j)]), with α =
    ``genre_inner_lr`` (default ``inner_lr``; ``user_row_lr`` for the (user, genre) row) and
    ρ_n the support-size step of :func:`trainer.maml.adapt` with κ =
    ``MamlConfig.genre_support_shrinkage``.

    Args:
        model: the model (``genre_params``, θ_global).
        sub_support: ``{feature: [N, S, ...], "mask": [N, S]}`` subtask supports.
        user_emb: ``[N, S, E]`` the user block's embeddings of those rows (held fixed).
        steps: adaptation steps.
        first_order: stop gradients through the inner gradients.
        rows: ``[N, d]`` the subtasks' (user, genre) rows (:func:`subtask_rows`), adapted with
            θ_g; None without a (user, genre) table.
    """
    cfg = model.maml_cfg
    if model.model_cfg.genre_combine == "residual":
        # the global block reads prefix + f_g(θ): with prefix e_user − f_g(θ_g^0) that is
        # e_user + Δ(θ), the residual slot's embedding, and at θ = θ_g^0 it is e_user
        start = meta_forward(start_params(model, rows), model.genre_x(sub_support),
                             model.model_cfg.activation)
        user_emb = tf.cast(user_emb, start.dtype) - start
    lr = tf.constant(cfg.inner_lr if cfg.genre_inner_lr is None else cfg.genre_inner_lr, model.dtype)
    lrs = {k: lr for k in model.genre_params}
    if rows is not None:
        row_lr = cfg.inner_lr if cfg.user_row_lr is None else cfg.user_row_lr
        lrs[USER_ROW] = tf.constant(row_lr, model.dtype)
    return adapt(model, sub_support, steps, first_order, meta_params=model.genre_params,
                 inner_lrs=lrs, support_meta_x=model.genre_x(sub_support), prefix_emb=user_emb,
                 user_row=rows, with_user_row=rows is not None,
                 support_shrinkage=cfg.genre_support_shrinkage)


def query_genre_embeddings(model: LimamlModel, support: Features, support_user_emb: tf.Tensor,
                           query: Features, steps: int, first_order: bool = False) -> tf.Tensor:
    """User × genre embeddings of the query rows, ``[T, Q, E]``.

    Args:
        model: the model.
        support: ``{feature: [T, S, ...], "mask": [T, S]}``.
        support_user_emb: ``[T, S, E]`` the adapted user block's embeddings of the support rows.
        query: ``{feature: [T, Q, ...]}``.
        steps, first_order: inner-loop settings.
    """
    genres = primary_genre(query)                                              # [T, Q]
    q_len = tf.shape(genres)[1]
    sub = subtask_supports(support, genres)                                    # [T·Q, S]
    user_emb = tf.repeat(support_user_emb, q_len, axis=0)                      # [T·Q, S, E]
    rows = subtask_rows(model, support, genres)
    theta = adapt_genre_block(model, sub, user_emb, steps, first_order, rows=rows)
    q_flat = {k: tf.reshape(v, tf.concat([[-1, 1], tf.shape(v)[2:]], 0))
              for k, v in query.items()}                                       # [T·Q, 1, ...]
    emb = genre_slot(model, theta, model.genre_x(q_flat), rows)
    return tf.reshape(emb, tf.concat([tf.shape(genres), [-1]], 0))
