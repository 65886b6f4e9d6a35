"""Meta-embedding generation (MEG): fine-tune the meta block per user, batched over users.

For every user u with support (recent interactions) ``x_u,1..S`` (padded, mask ``m_u``)::

    θ_u = inner loop of :func:`trainer.maml.adapt` (adaptation_steps steps, inner_lr / Meta-SGD α)
    e_u = aggregate_{s: m_u,s = 1} f(x_meta,u,s; θ_u)       (latest | mean | max)

Users with no valid support interaction get the un-adapted output f(x_meta,u,0; θ_meta)
(cold start); their padded row 0 must carry the user's meta features. For users with no row at
all, use :func:`cold_start_embedding` on their meta features.

References:
    LiMAML (arXiv:2403.00803) §3.3: offline fine-tuning of the meta block per member and
    storage of its output as the member's meta embedding.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import tensorflow as tf

from limaml.config import MamlConfig
from trainer.layout import MASK
from trainer.maml import LABEL, adapt, aggregate
from trainer.model import LimamlModel, history_width, meta_forward


def generate_meta_embeddings_fn(model: LimamlModel, support: Mapping[str, tf.Tensor],
                                mask: tf.Tensor, aggregation: str, adaptation_steps: int,
                                inner_lr: Optional[float] = None) -> tf.Tensor:
    """Traceable body of :func:`generate_meta_embeddings` (no Python loop over users).

    Args:
        model: the trained model (θ_meta, θ_global, α are read, never written).
        support: ``{feature: [users, S, ...], "label": [users, S]}`` encoded support sets.
        mask: ``[users, S]`` valid support positions (time-ordered, padding after).
        aggregation: ``"latest"``, ``"mean"`` or ``"max"``.
        adaptation_steps: inner steps k.
        inner_lr: fixed α overriding the model's (ignored when the model learned Meta-SGD rates).

    Returns:
        ``[users, E]`` meta embeddings.
    """
    part = dict(support)
    part[MASK] = tf.cast(mask, model.dtype)
    if LABEL not in part:
        raise KeyError("support needs 'label' (the inner loop fine-tunes on the support loss)")
    s_x = model.meta_x(part, model.history_vector(part))
    lrs = None
    if inner_lr is not None and not model.inner_lrs:
        lrs = dict(model.inner_lr_tensors())
        lrs.update({k: tf.constant(inner_lr, model.dtype) for k in model.meta_names})
    adapted = adapt(model, part, adaptation_steps, first_order=True, inner_lrs=lrs,
                    support_meta_x=s_x)
    act = model.model_cfg.activation
    emb = tf.stop_gradient(aggregate(meta_forward(adapted, s_x, act), part[MASK], aggregation))
    cold = meta_forward(model.meta_params_for({k: v[:, 0] for k, v in part.items()}),
                        s_x[:, 0, :], act)
    has_any = tf.reduce_any(part[MASK] > 0, axis=1)
    return tf.where(has_any[:, None], emb, cold)


_FN_CACHE: Dict[Tuple[int, str, int, float], object] = {}


def generate_meta_embeddings(model: LimamlModel, support_batch: Mapping[str, tf.Tensor],
                             mask: tf.Tensor, aggregation: str = "mean",
                             maml_cfg: Optional[MamlConfig] = None) -> tf.Tensor:
    """Fine-tunes the meta block on each user's support set and aggregates (one tf.function).

    Args:
        model: the trained model.
        support_batch: ``{feature: [users, S, ...], "label": [users, S]}`` encoded features.
        mask: ``[users, S]`` valid positions.
        aggregation: ``"latest"`` | ``"mean"`` | ``"max"``.
        maml_cfg: adaptation hyper-parameters (default: ``model.maml_cfg``); α is the model's
            learned Meta-SGD rates when it has them, else ``maml_cfg.inner_lr``.

    Returns:
        ``[users, E]``; users without valid support get the un-adapted (cold-start) output.
    """
    cfg = model.maml_cfg if maml_cfg is None else maml_cfg
    key = (id(model), aggregation, cfg.adaptation_steps, cfg.inner_lr)
    fn = _FN_CACHE.get(key)
    if fn is None:
        inner_lr = None if model.inner_lrs else cfg.inner_lr
        fn = tf.function(
            lambda support, mask_: generate_meta_embeddings_fn(
                model, support, mask_, aggregation, cfg.adaptation_steps, inner_lr),
            reduce_retracing=True)
        _FN_CACHE[key] = fn
    return fn({k: tf.convert_to_tensor(v) for k, v in support_batch.items() if k != MASK},
              tf.convert_to_tensor(mask))


def generate_genre_embeddings(model: LimamlModel, support: Mapping[str, tf.Tensor],
                              mask: tf.Tensor, genres: tf.Tensor, user_emb: tf.Tensor) -> tf.Tensor:
    """User × genre meta embeddings (MEG of the second block; see :mod:`trainer.genre_block`).

    For user u and genre g, θ_g is adapted on u's support rows of genre g (with u's embedding
    ``user_emb`` in front, held fixed), then ``e_u,g = f_g([x_meta,u, one-hot(g)]; θ_g,(u,g))``.
    With no row of that genre θ_g stays un-adapted (the entity's cold start).

    Args:
        model: a trained model with a user×genre block.
        support: ``{feature: [U, S, ...], "label": [U, S]}``; row 0 carries u's meta features.
        mask: ``[U, S]`` valid positions.
        genres: ``[U, K]`` genre buckets wanted per user (int).
        user_emb: ``[U, E]`` the users' meta embeddings (:func:`generate_meta_embeddings`).

    Returns:
        ``[U, K, E]``.
    """
    from trainer import genre_block  # noqa: PLC0415  (genre_block imports trainer.maml)

    part = {k: tf.convert_to_tensor(v) for k, v in support.items()}
    part[MASK] = tf.cast(mask, model.dtype)
    genres = tf.cast(genres, tf.int64)
    k = tf.shape(genres)[1]
    sub = genre_block.subtask_supports(part, genres)                           # [U·K, S]
    prefix = tf.broadcast_to(tf.repeat(tf.cast(user_emb, model.dtype), k, axis=0)[:, None, :],
                             tf.concat([tf.shape(sub[MASK]), tf.shape(user_emb)[1:]], 0))
    theta = genre_block.adapt_genre_block(model, sub, prefix, model.maml_cfg.adaptation_steps,
                                          first_order=True)
    # the entity's row: u's meta features (row 0) with genre g as its only genre
    name, buckets = model.layout.global_multi_hot[0]
    first = {k: v[:, :1] for k, v in sub.items() if k != MASK}                 # [U·K, 1, ...]
    first[name] = tf.one_hot(tf.reshape(genres, [-1, 1]), buckets, dtype=first[name].dtype)
    emb = meta_forward(theta, model.genre_x(first), model.model_cfg.activation)[:, 0]  # [U·K, E]
    return tf.stop_gradient(tf.reshape(emb, tf.concat([tf.shape(genres), [-1]], 0)))


def cold_start_embedding(model: LimamlModel, meta_x: tf.Tensor) -> tf.Tensor:
    """Un-adapted meta embedding f(x_meta; θ_meta) for users without history.

    Args:
        model: the trained model.
        meta_x: dense meta input ``[users, D]`` (see :func:`trainer.model.meta_input`), or an
            encoded feature dict with ``[users]`` entries.

    Returns:
        ``[users, E]``.
    """
    if isinstance(meta_x, Mapping):
        params = model.meta_params_for(meta_x)
        meta_x = model.meta_x(meta_x)
    elif model.user_emb is not None:
        raise ValueError("this meta block has a user-id embedding: pass the encoded feature dict "
                         "(with 'user_hash'), not a dense meta_x")
    else:
        params = model.meta_params
        if model.history_emb is not None:  # no history: the summary's zeros
            meta_x = tf.concat([tf.cast(meta_x, model.dtype), tf.zeros(
                [tf.shape(meta_x)[0], history_width(model.layout, model.model_cfg)], model.dtype)], -1)
    return meta_forward(params, tf.cast(meta_x, model.dtype), model.model_cfg.activation)
