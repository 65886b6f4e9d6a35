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

With ``ModelConfig.genre_combine="residual"`` (the default) the genre slot is the adaptation's
change ``Δ = f_g(x_g; θ_g,(t,q)) − f_g(x_g; θ_g)`` and the global block reads ``e_user + Δ``: a
subtask without rows, a cold start and pre-training give Δ = 0, the single-block model's input
(:func:`genre_slot`). With one inner step the subtasks share their first step
(:func:`adapt_subtasks`): one pass over the task's support rows, not one per subtask.

With ``ModelConfig.genre_row_buckets`` the genre block also reads the pair's own row
``r_(u,g)`` (``x_g = [meta input, one-hot(g), r_(u,g)]``), fitted on every row of the pair by
pre-training and the outer loop and adapted in the subtask's inner loop, as the user block's
user row; a pair never seen in training meets the zero row.

Shapes: ``T`` tasks, ``S`` support, ``Q`` query, ``E`` embedding width, ``G`` genre buckets.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import tensorflow as tf

from schema import features
from trainer.global_block import global_forward
from trainer.layout import MASK, USER_HASH
from trainer.maml import adapt, per_task, with_other_blocks
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


def residual_prefix(model: LimamlModel, user_emb: tf.Tensor, x: tf.Tensor,
                    rows: Optional[tf.Tensor] = None) -> tf.Tensor:
    """The fixed prefix of the genre subtasks' support loss: ``user_emb`` ``[N, S, E]``, or with
    ``genre_combine="residual"`` ``user_emb − f_g(x; θ_g^0)``. The global block reads
    prefix + f_g(x; θ), which is then e_user + Δ(θ), the residual slot's embedding, and at
    θ = θ_g^0 it is e_user (``x`` ``[N, S, D + G]`` the rows' genre inputs, ``rows`` their
    starting (user, genre) rows)."""
    user_emb = tf.cast(user_emb, model.dtype)
    if model.model_cfg.genre_combine != "residual":
        return user_emb
    return user_emb - meta_forward(start_params(model, rows), x, model.model_cfg.activation)


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
    x = model.genre_x(sub_support)
    return adapt(model, sub_support, steps, first_order, meta_params=model.genre_params,
                 inner_lrs=_step_sizes(model, rows is not None), support_meta_x=x,
                 prefix_emb=residual_prefix(model, user_emb, x, rows),
                 user_row=rows, with_user_row=rows is not None,
                 support_shrinkage=cfg.genre_support_shrinkage)


def _step_sizes(model: LimamlModel, rows: bool) -> Dict[str, tf.Tensor]:
    """α per θ_g entry: ``genre_inner_lr`` (default ``inner_lr``); ``user_row_lr`` for the
    (user, genre) row."""
    cfg = model.maml_cfg
    lr = tf.constant(cfg.inner_lr if cfg.genre_inner_lr is None else cfg.genre_inner_lr, model.dtype)
    lrs = {k: lr for k in model.genre_params}
    if rows:
        row_lr = cfg.inner_lr if cfg.user_row_lr is None else cfg.user_row_lr
        lrs[USER_ROW] = tf.constant(row_lr, model.dtype)
    return lrs


def _shares_first_step(model: LimamlModel, steps: int) -> bool:
    """Whether :func:`adapt_subtasks` may take the shared first step: one step, and the pair rows
    (if any) take plain gradient steps from their own table rows."""
    if steps != 1:
        return False
    if model.genre_user_emb is None:
        return True
    return model.row_log_precision is None and model.model_cfg.user_id_min_support == 0


def _shared_first_step(model: LimamlModel, support: Features, x: tf.Tensor, weights: tf.Tensor,
                       user_emb: tf.Tensor, rows: Optional[tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Every subtask's support-loss gradient at θ_g^0, from one pass over the tasks' rows.

    At θ_g^0 a support row's logit does not depend on which subtask it is in (its genre input
    and its (user, genre) row are its own), so with per-row pre-activation gradients
    ``δ_l[t, s] = ∂bce_s/∂z_l[t, s]`` (one forward and backward over ``[T, S]`` rows, not
    ``[T·K, S]``) subtask (t, k) with weights ``w[t, k, s] = m_sub / max(n_sub, 1)`` has::

        ∂L_t,k/∂W_l = Σ_s w[t, k, s] h_l[t, s]ᵀ δ_l[t, s]     ∂L_t,k/∂b_l = Σ_s w[t, k, s] δ_l[t, s]

    (and the same weighted sum of the per-row row gradients for the (user, genre) row), the
    gradient of the masked mean of :func:`trainer.maml.masked_task_loss`. Differentiable again
    for the second-order meta-gradient.

    Args:
        model: the model.
        support: ``{feature: [T, S, ...], "mask": [T, S]}``.
        x: ``[T, S, D + G]`` the rows' genre inputs (``model.genre_x(support)``).
        weights: ``[T, K, S]`` the subtasks' loss weights.
        user_emb: ``[T, S, E]`` the fixed prefix (shifted for ``"residual"``).
        rows: ``[T, S, d]`` each support row's own (user, genre) row, or None.

    Returns:
        ``{w_l: [T, K, d_l, h_l], b_l: [T, K, h_l](, user_row: [T, K, d])}``.
    """
    inputs, pre = [], []
    with tf.GradientTape() as tape:
        params = dict(model.genre_params)
        if rows is not None:
            tape.watch(rows)
            params[USER_ROW] = rows

        def record(h: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
            tape.watch(z)
            inputs.append(h)
            pre.append(z)
            return z

        emb = meta_forward(params, x, model.model_cfg.activation, on_layer=record)
        logits = global_forward(model.global_params, with_other_blocks(emb, user_emb, None),
                                support, model.layout, model.model_cfg, meta_apart=True)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(support[features.LABEL], logits.dtype), logits=logits)
        loss = tf.reduce_sum(bce * tf.cast(support[MASK], logits.dtype))
    grads = tape.gradient(loss, pre + ([rows] if rows is not None else []))
    w = tf.cast(weights, emb.dtype)
    out: Dict[str, tf.Tensor] = {}
    for i, h in enumerate(inputs):
        delta = tf.convert_to_tensor(grads[i])                                    # [T, S, h]
        weighted = w[..., None] * delta[:, None]                                  # [T, K, S, h]
        out[f"w{i}"] = tf.linalg.matmul(h[:, None], weighted, transpose_a=True)   # [T, K, d, h]
        out[f"b{i}"] = tf.linalg.matmul(w, delta)                                 # [T, K, h]
    if rows is not None:
        out[USER_ROW] = tf.linalg.matmul(w, tf.convert_to_tensor(grads[-1]))      # [T, K, d]
    return out


def adapt_subtasks(model: LimamlModel, support: Features, genres: tf.Tensor, user_emb: tf.Tensor,
                   steps: int, first_order: bool = False
                   ) -> Tuple[Dict[str, tf.Tensor], Optional[tf.Tensor]]:
    """θ_g adapted on the genre subtasks (t, k) of :func:`subtask_supports`.

    With one step (the default) the first step is shared (:func:`_shared_first_step`): the
    tasks' support rows pass through the genre and global blocks once, not once per subtask,
    and θ_g,(t,k) = θ_g − α ρ_t,k ∇L_t,k as in :func:`adapt_genre_block` (which more steps use,
    on ``[T·K, S]`` copies of the rows).

    Args:
        model: the model.
        support: ``{feature: [T, S, ...], "mask": [T, S]}``.
        genres: ``[T, K]`` the subtasks' genre buckets.
        user_emb: ``[T, S, E]`` the user block's embeddings of the support rows (held fixed).
        steps: adaptation steps.
        first_order: stop gradients through the inner gradients.

    Returns:
        ``(theta {name: [T·K, ...]}, rows [T·K, d] or None)``: the adapted parameters, subtask
        (t, k) at row ``t·K + k``, and the subtasks' starting (user, genre) rows.
    """
    rows = subtask_rows(model, support, genres)
    k = tf.shape(genres)[1]
    if not _shares_first_step(model, steps):
        sub = subtask_supports(support, genres)                                # [T·K, S]
        theta = adapt_genre_block(model, sub, tf.repeat(user_emb, k, axis=0), steps, first_order,
                                  rows=rows)
        return theta, rows
    cfg = model.maml_cfg
    mask = tf.cast(subtask_supports({MASK: support[MASK], features.GENRES: support[features.GENRES]},
                                    genres)[MASK], model.dtype)                # [T·K, S]
    n = tf.reduce_sum(mask, axis=1)                                            # [T·K]
    weights = tf.reshape(mask / tf.maximum(n, 1.0)[:, None], [-1, k, tf.shape(mask)[1]])
    row_rows = None  # each support row's own (user, genre) row
    if rows is not None:
        row_rows = model.genre_rows(support[USER_HASH], primary_genre(support))  # [T, S, d]
    x = model.genre_x(support)
    grads = _shared_first_step(model, support, x, weights,
                               residual_prefix(model, user_emb, x, row_rows), row_rows)
    kappa = cfg.support_shrinkage if cfg.genre_support_shrinkage is None else cfg.genre_support_shrinkage
    shrink = n / (n + kappa) if kappa > 0 else tf.ones_like(n)                 # [T·K]
    lrs = _step_sizes(model, rows is not None)
    theta = {}
    for name, g in grads.items():
        g = tf.reshape(g, tf.concat([[-1], tf.shape(g)[2:]], 0))              # [T·K, ...]
        if first_order:
            g = tf.stop_gradient(g)
        g = g * per_task(tf.cast(shrink, g.dtype), g)
        start = rows if name == USER_ROW else tf.convert_to_tensor(model.genre_params[name])[None]
        theta[name] = start - lrs[name] * g
    return theta, rows


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
    theta, rows = adapt_subtasks(model, support, genres, support_user_emb, steps, first_order)
    q_flat = {k: tf.reshape(v, tf.concat([[-1, 1], tf.shape(v)[2:]], 0))
              for k, v in query.items()}                                       # [T·Q, 1, ...]
    emb = genre_slot(model, theta, model.genre_x(q_flat), rows)
    return tf.reshape(emb, tf.concat([tf.shape(genres), [-1]], 0))
