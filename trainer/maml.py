"""Batched MAML over tasks (one user = one task), written with tf.GradientTape.

Task batch (fixed shapes, padded with masks)::

    {"support": {feature: [tasks, S, ...], "label": [tasks, S], "mask": [tasks, S]},
     "query":   {feature: [tasks, Q, ...], "label": [tasks, Q], "mask": [tasks, Q]}}

Inner loop (all tasks at once, θ_meta tiled to per-task copies θ_u [tasks, ...], functional:
no variable is ever assigned)::

    θ_u^0 = θ_meta
    θ_u^{j+1} = θ_u^j − α ⊙ ∇_{θ_u^j} L_support,u(θ_u^j, θ_global),   j < adaptation_steps

where L_*,u is the masked mean binary cross-entropy of task u and α is ``inner_lr`` (fixed) or a
learned per-entry tensor (Meta-SGD, ``learn_inner_lr``). Outer loss, minimised with Adam over
θ_meta, θ_global (and α)::

    L_outer = mean_u L_query,u(θ_u^k, θ_global)

Second-order by default (the outer tape differentiates through the inner gradients);
``first_order`` stops the gradient through the inner gradients (FOMAML).

References:
    Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks.
    ICML 2017 (arXiv:1703.03400): §2.2 Algorithm 1 (inner/outer update), §5.2 first-order
    approximation. Li, Zhou, Chen, Li. Meta-SGD (arXiv:1707.09835): §3 (learned per-entry α).
    Wang et al. LiMAML: Personalization of Deep Recommender Models via Meta Learning
    (arXiv:2403.00803): §3 (member tasks, meta block adapted, global block shared).
    Kingma, Ba. Adam (arXiv:1412.6980): Algorithm 1 (the outer optimiser :class:`Adam`).
    Support-size sampling and the n/(n+κ) step are this project's (see MamlConfig).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from limaml.config import MamlConfig
from schema import features
from trainer.flat_call import FlatCall
from trainer.layout import MASK, QUERY, SUPPORT, USER_HASH
from trainer.model import USER_ROW, LimamlModel, Params, global_forward, meta_forward

LABEL = features.LABEL
AGGREGATIONS = ("latest", "mean", "max")
log = logging.getLogger(__name__)


def masked_task_loss(logits: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Per-task masked mean binary cross-entropy.

    Args:
        logits: ``[tasks, n]``.
        labels: ``[tasks, n]`` 0/1.
        mask: ``[tasks, n]`` 1 for valid positions.

    Returns:
        ``[tasks]``: Σ_n mask·bce / max(Σ_n mask, 1) (0 for a task without valid positions).
    """
    labels = tf.cast(labels, logits.dtype)
    mask = tf.cast(mask, logits.dtype)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(bce * mask, axis=-1) / tf.maximum(tf.reduce_sum(mask, axis=-1), 1.0)


def recency_weights(mask: tf.Tensor, halflife: float) -> tf.Tensor:
    """Recency weights of support rows, ``[tasks, S]``.

    ``w_s = m_s · 2^(−a_s / h)`` with ``a_s`` the number of valid positions after s (0 for a
    task's latest row; positions are in time order, padding and cut rows have ``m_s = 0``).

    Args:
        mask: ``[tasks, S]`` valid positions (> 0).
        halflife: h > 0, in rows.

    Returns:
        ``[tasks, S]`` weights in (0, 1], 0 at invalid positions.
    """
    valid = tf.cast(tf.cast(mask, tf.float32) > 0, tf.float32)
    after = tf.reduce_sum(valid, axis=1, keepdims=True) - tf.cumsum(valid, axis=1)
    weights = valid * tf.pow(2.0, -after / float(halflife))
    return tf.cast(weights, mask.dtype) if mask.dtype.is_floating else weights


def tile_params(params: Mapping[str, tf.Tensor], tasks) -> Params:
    """Per-task copies: every ``p [...]`` becomes ``[tasks, ...]`` (differentiable w.r.t. ``p``)."""
    return {k: tf.tile(tf.convert_to_tensor(v)[None], tf.concat(
        [[tasks], tf.ones([len(v.shape)], tf.int32)], 0)) for k, v in params.items()}


def aggregate(emb: tf.Tensor, mask: tf.Tensor, aggregation: str) -> tf.Tensor:
    """Aggregates per-sample meta embeddings over a (support) set.

    Args:
        emb: ``[tasks, n, E]`` meta embeddings, positions ordered by time (padding after).
        mask: ``[tasks, n]``.
        aggregation: ``"latest"`` (last valid position), ``"mean"`` (masked mean) or ``"max"``
            (masked elementwise max).

    Returns:
        ``[tasks, E]``. A task without any valid position gets ``emb[:, 0]``.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation {aggregation!r} must be one of {AGGREGATIONS}")
    m = tf.cast(mask, emb.dtype) > 0
    n = tf.shape(emb)[1]
    has_any = tf.reduce_any(m, axis=1)
    if aggregation == "latest":
        pos = tf.where(m, tf.range(n)[None, :], -1)
        last = tf.maximum(tf.reduce_max(pos, axis=1), 0)
        return tf.gather(emb, last, batch_dims=1)
    if aggregation == "mean":
        mf = tf.cast(m, emb.dtype)[..., None]
        out = tf.reduce_sum(emb * mf, axis=1) / tf.maximum(tf.reduce_sum(mf, axis=1), 1.0)
    else:
        neg = tf.fill(tf.shape(emb), tf.constant(-np.inf, emb.dtype))
        out = tf.reduce_max(tf.where(m[..., None], emb, neg), axis=1)
    return tf.where(has_any[:, None], out, emb[:, 0])


def set_logits(model: LimamlModel, meta_params: Params, global_params: Mapping[str, tf.Tensor],
               meta_x: tf.Tensor, part: Mapping[str, tf.Tensor],
               prefix_emb: Optional[tf.Tensor] = None,
               suffix_emb: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Logits ``[tasks, n]`` of one set with per-sample meta embeddings.

    ``prefix_emb`` / ``suffix_emb`` ``[tasks, n, E']``: fixed embeddings of other meta blocks,
    put before / after this block's output (the global block reads ``[e_user, e_user×genre]``).
    """
    emb = with_other_blocks(meta_forward(meta_params, meta_x, model.model_cfg.activation),
                             prefix_emb, suffix_emb)
    return global_forward(global_params, emb, part, model.layout, model.model_cfg, meta_apart=True)


def with_other_blocks(emb: tf.Tensor, prefix_emb: Optional[tf.Tensor],
                       suffix_emb: Optional[tf.Tensor]) -> tf.Tensor:
    """``[prefix_emb, emb, suffix_emb]`` on the last axis (the absent ones left out)."""
    if prefix_emb is not None:
        emb = tf.concat([tf.cast(prefix_emb, emb.dtype), emb], axis=-1)
    if suffix_emb is not None:
        emb = tf.concat([emb, tf.cast(suffix_emb, emb.dtype)], axis=-1)
    return emb


def set_loss(model: LimamlModel, meta_params: Params, global_params: Mapping[str, tf.Tensor],
             meta_x: tf.Tensor, part: Mapping[str, tf.Tensor],
             prefix_emb: Optional[tf.Tensor] = None,
             suffix_emb: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Per-task loss ``[tasks]`` of one set (:func:`set_logits`, masked mean BCE)."""
    logits = set_logits(model, meta_params, global_params, meta_x, part, prefix_emb, suffix_emb)
    return masked_task_loss(logits, part[LABEL], part[MASK])


def gauss_newton_row_step(row: tf.Tensor, row0: tf.Tensor, logits: tf.Tensor,
                          jacobian: tf.Tensor, part: Mapping[str, tf.Tensor],
                          precision: tf.Tensor) -> tf.Tensor:
    """One damped Gauss-Newton step of the user rows on the MAP objective.

    Objective per task: ``Σ_s m_s bce(y_s, logit_s(r)) + ½ (r − r_0)ᵀ Λ (r − r_0)``::

        g = Σ_s m_s (p_s − y_s) J_s + Λ (r − r_0)          [tasks, d]
        H = Σ_s m_s p_s (1 − p_s) J_s J_sᵀ + Λ              [tasks, d, d]
        r ← r − H⁻¹ g

    Args:
        row: current rows ``r`` ``[tasks, d]``.
        row0: prior means ``r_0`` ``[tasks, d]`` (the rows the inner loop started from).
        logits: ``[tasks, S]`` support logits at ``r``.
        jacobian: ``J [tasks, S, d]``, ``∂logit_s/∂r`` per support row.
        part: the support set (``label``, ``mask`` ``[tasks, S]``).
        precision: Λ's diagonal ``[d]`` (> 0).

    Returns:
        The new rows ``[tasks, d]``. A task without support rows keeps ``r`` when ``r = r_0``.
    """
    dtype = logits.dtype
    m = tf.cast(part[MASK], dtype)
    y = tf.cast(part[LABEL], dtype)
    p = tf.sigmoid(logits)
    lam = tf.cast(precision, dtype)
    grad = tf.einsum("ts,tsd->td", m * (p - y), jacobian) + lam * (row - row0)
    hess = tf.einsum("ts,tsd,tse->tde", m * p * (1.0 - p), jacobian, jacobian) + tf.linalg.diag(
        tf.broadcast_to(lam, tf.shape(row)))
    return row - tf.linalg.solve(hess, grad[..., None])[..., 0]


def per_task(x: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """``x [tasks]`` reshaped to ``[tasks, 1, ...]`` to broadcast against ``like [tasks, ...]``."""
    return tf.reshape(x, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def sgd_step(start: tf.Tensor, grad: tf.Tensor, lr: tf.Tensor, scale: Optional[tf.Tensor]
             ) -> tf.Tensor:
    """``start − lr ⊙ (s_u · grad)``: one inner SGD step of one parameter for every task.

    Args:
        start: ``[tasks, ...]`` (or ``[1, ...]``, shared by every task).
        grad: ``[tasks, ...]``.
        lr: α, a scalar or Meta-SGD rates shaped like the parameter.
        scale: per-task factor ``s [tasks]`` (None: 1). A scalar α is folded into it, so the
            step makes one pass over ``grad`` before the subtraction.
    """
    lr = tf.convert_to_tensor(lr)
    if scale is None:
        return start - lr * grad
    if lr.shape.rank == 0:
        return start - grad * per_task(lr * scale, grad)
    return start - lr * (grad * per_task(scale, grad))


def _touched_rows(g: tf.Tensor) -> tf.Tensor:
    """``[n, 1]``: the rows of a table gradient ``g [n, d]`` with a non-zero entry."""
    return tf.reduce_any(tf.not_equal(g, 0), axis=-1, keepdims=True)


def _first_step_gradients(model: LimamlModel, shared: Mapping[str, tf.Tensor],
                          row: Optional[tf.Tensor], meta_x: tf.Tensor,
                          global_params: Mapping[str, tf.Tensor], support: Mapping[str, tf.Tensor],
                          prefix_emb: Optional[tf.Tensor], suffix_emb: Optional[tf.Tensor]
                          ) -> Dict[str, tf.Tensor]:
    """Per-task gradients of the support losses at the first inner step, where every task's θ_u
    is the same θ: ``{w_l: [tasks, d_l, h_l], b_l: [tasks, h_l](, user_row: [tasks, d])}``.

    The forward pass runs once with the shared weights over all tasks' rows (plain matmuls,
    no per-task copies). With ``δ_l = ∂L/∂z_l`` ``[tasks, n, h_l]`` the gradient w.r.t. the
    pre-activations ``z_l = h_l W_l + b_l`` of layer l, task t's gradients are::

        ∂L_t/∂W_l = h_l[t]ᵀ δ_l[t]   (one batched matmul)      ∂L_t/∂b_l = Σ_n δ_l[t, n]

    (task t's loss depends only on its own rows, so the gradient of the summed loss restricted
    to task t's rows is ∇L_t). Equal to differentiating per-task copies, and differentiable again
    for the second-order meta-gradient.
    """
    inputs, pre = [], []
    with tf.GradientTape() as tape:
        params = dict(shared)
        if row is not None:
            tape.watch(row)
            params[USER_ROW] = row  # [tasks, d], broadcast over each task's rows

        def record(h: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
            tape.watch(z)
            inputs.append(h)
            pre.append(z)
            return z

        emb = meta_forward(params, meta_x, model.model_cfg.activation, on_layer=record)
        logits = global_forward(global_params, with_other_blocks(emb, prefix_emb, suffix_emb),
                                support, model.layout, model.model_cfg, meta_apart=True)
        loss = tf.reduce_sum(masked_task_loss(logits, support[LABEL], support[MASK]))
    grads = tape.gradient(loss, pre + ([row] if row is not None else []))
    out: Dict[str, tf.Tensor] = {}
    for i in range(len(pre)):
        delta = tf.convert_to_tensor(grads[i])
        out[f"w{i}"] = tf.linalg.matmul(inputs[i], delta, transpose_a=True)   # [tasks, d, h]
        out[f"b{i}"] = tf.reduce_sum(delta, axis=1)                            # [tasks, h]
    if row is not None:
        out[USER_ROW] = tf.convert_to_tensor(grads[-1])
    return out


def adapt(model: LimamlModel, support: Mapping[str, tf.Tensor], steps: int,
          first_order: bool = False, meta_params: Optional[Mapping[str, tf.Tensor]] = None,
          global_params: Optional[Mapping[str, tf.Tensor]] = None,
          inner_lrs: Optional[Mapping[str, tf.Tensor]] = None,
          support_meta_x: Optional[tf.Tensor] = None, user_row: Optional[tf.Tensor] = None,
          prefix_emb: Optional[tf.Tensor] = None, with_user_row: bool = True,
          min_support: int = 0, support_shrinkage: Optional[float] = None) -> Params:
    """The inner loop for all tasks at once; never assigns a variable.

    θ_u^{j+1} = θ_u^j − α ⊙ ρ_u ∇ L_support,u(θ_u^j), j < steps; only θ_meta adapts, where
    ρ_u = n_u / (n_u + κ) for a task with n_u support rows (``MamlConfig.support_shrinkage`` κ;
    ρ_u = 1 when κ = 0): few support rows, a shorter step. With
    ``MamlConfig.inner_solver="gauss_newton"`` the user-id row instead takes the damped
    Gauss-Newton step of :func:`gauss_newton_row_step` (MAP under the learned prior Λ, no ρ_u).
    With ``MamlConfig.support_recency_halflife`` h > 0, ``L_support`` weighs each row by
    :func:`recency_weights` instead of the plain masked mean.

    Args:
        model: the model (layout, config; default parameter source).
        support: support set ``{feature: [tasks, S, ...], "label": [tasks, S], "mask": [tasks, S]}``.
        steps: adaptation_steps k (static).
        first_order: stop gradients through the inner gradients.
        meta_params: θ_meta to start from (default: the model's variables), unbatched.
        global_params: θ_global (default: the model's variables).
        inner_lrs: α per θ_meta entry (default: ``model.inner_lr_tensors()``).
        support_meta_x: precomputed dense meta input ``[tasks, S, D]``.
        user_row: with a user-id embedding, the tasks' starting rows ``[tasks, d]`` (default:
            the table rows of ``support["user_hash"][:, 0]``); zeroed for tasks with fewer
            than ``ModelConfig.user_id_min_support`` support rows.
        prefix_emb: ``[tasks, S, E']`` embeddings of other meta blocks, fixed during this
            block's adaptation (the user×genre block adapts after the user block). When the
            model has a user×genre block and no prefix is given, this is the user block: its
            support loss reads the genre block's un-adapted embeddings after its own.
        with_user_row: adapt the user-id row too (False for blocks without one).
        min_support: tasks with fewer valid support rows keep θ_u^0, the un-adapted
            parameters (their table row); 0 adapts every task. MEG passes
            ``MamlConfig.meg_min_support``; meta-training adapts every task.
        support_shrinkage: κ of ρ_u (default ``MamlConfig.support_shrinkage``; the user × genre
            block passes ``MamlConfig.genre_support_shrinkage``).

    Returns:
        Adapted per-task θ_u, each ``[tasks, ...]``.
    """
    meta_params = model.meta_params if meta_params is None else meta_params
    global_params = model.global_params if global_params is None else global_params
    inner_lrs = model.inner_lr_tensors() if inner_lrs is None else inner_lrs
    if support_meta_x is None:
        support_meta_x = model.meta_x(support, model.history_vector(support))
    meta_x = support_meta_x
    tasks = tf.shape(meta_x)[0]
    theta = tile_params({k: v for k, v in meta_params.items() if k != USER_ROW}, tasks)
    if model.user_emb is not None and with_user_row:
        # Sparse adaptation: each task holds only its own row of the user-id table.
        row = model.user_rows(support[USER_HASH][:, 0]) if user_row is None else user_row
        min_rows = model.model_cfg.user_id_min_support
        if min_rows > 0:  # too few support rows: start from the zero (cold) row
            n_rows = tf.reduce_sum(tf.cast(support[MASK] > 0, row.dtype), axis=1)
            row = row * tf.cast(n_rows >= min_rows, row.dtype)[:, None]
        theta[USER_ROW] = row
    theta0 = theta
    suffix_emb = model.genre_embedding(support) if prefix_emb is None else None
    names = sorted(theta)
    halflife = model.maml_cfg.support_recency_halflife
    # the support loss's row weights (the mask, or recency weights); counts use the mask
    weighted = support if halflife <= 0 else dict(
        support, **{MASK: recency_weights(support[MASK], halflife)})
    kappa = model.maml_cfg.support_shrinkage if support_shrinkage is None else support_shrinkage
    # Per-task factor of every SGD step [tasks] (None: 1): ρ_u, times 0 for a task under
    # min_support, which so stays at θ_u^0 (a scalar per task instead of a select over the
    # tasks' weight copies).
    step_scale = None
    if kappa > 0:
        # support-size-aware step: a task with n support rows moves n / (n + κ) of the way
        n = tf.reduce_sum(tf.cast(support[MASK], meta_x.dtype), axis=1)
        step_scale = n / (n + tf.cast(kappa, meta_x.dtype))
    keep = None
    if min_support > 0 and steps > 0:
        n_valid = tf.reduce_sum(tf.cast(support[MASK] > 0, tf.int32), axis=1)
        keep = n_valid >= min_support  # [tasks]: adapt; else stay at θ_u^0
        kept = tf.cast(keep, meta_x.dtype)
        step_scale = kept if step_scale is None else step_scale * kept
    newton = model.row_log_precision is not None and USER_ROW in theta
    if newton:  # the row takes Gauss-Newton steps (MamlConfig.inner_solver), the rest SGD
        names = [k for k in names if k != USER_ROW]
        row0 = theta[USER_ROW]
        precision = tf.exp(model.row_log_precision)
    for step in range(steps):
        if step == 0 and not newton:
            # Every task starts from the same θ: one shared forward pass instead of per-task copies.
            shared = {k: tf.convert_to_tensor(v) for k, v in meta_params.items() if k != USER_ROW}
            grads0 = _first_step_gradients(model, shared, theta.get(USER_ROW), meta_x,
                                           global_params, weighted, prefix_emb, suffix_emb)
            new = {}
            for k in names:
                g = tf.stop_gradient(grads0[k]) if first_order else grads0[k]
                start = theta[k] if k == USER_ROW else shared[k][None]
                new[k] = sgd_step(start, g, inner_lrs[k], step_scale)
            theta = new
            continue
        with tf.GradientTape(persistent=newton) as inner:
            inner.watch([theta[k] for k in names])
            params = theta
            if newton:
                # one copy of the row per support row: ∂logit_s/∂copy_s is the per-row Jacobian
                row = theta[USER_ROW]
                copies = tf.broadcast_to(row[:, None, :], tf.concat(
                    [tf.shape(meta_x)[:2], tf.shape(row)[-1:]], 0))
                inner.watch(copies)
                params = dict(theta, **{USER_ROW: copies})
            logits = set_logits(model, params, global_params, meta_x, support, prefix_emb,
                                suffix_emb)
            # Sum over tasks: task u's loss depends only on its own copy θ_u, so the gradient
            # w.r.t. θ_u is exactly ∇ L_support,u.
            loss = tf.reduce_sum(masked_task_loss(logits, support[LABEL], weighted[MASK]))
            logit_sum = tf.reduce_sum(logits) if newton else None
        grads = inner.gradient(loss, [theta[k] for k in names])
        new = {}
        if newton:
            jac = inner.gradient(logit_sum, copies)
            del inner
            if first_order:
                jac = tf.stop_gradient(jac)
            new[USER_ROW] = gauss_newton_row_step(row, row0, logits, jac, weighted, precision)
        for k, g in zip(names, grads):
            g = tf.zeros_like(theta[k]) if g is None else tf.convert_to_tensor(g)
            if first_order:
                g = tf.stop_gradient(g)
            new[k] = sgd_step(theta[k], g, inner_lrs[k], step_scale)
        theta = new
    if newton and keep is not None:  # the Gauss-Newton row step is not scaled: select
        theta[USER_ROW] = tf.where(keep[:, None], theta[USER_ROW], theta0[USER_ROW])
    return theta


def sample_support_sizes(support: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Keeps each task's latest k support rows, k log-uniform in ``1..n``.

    ``k = clip(floor((n + 1)^u), 1, n)``, ``u ~ U[0, 1)``, for a task with ``n`` valid rows
    (valid positions come first, in time order, so the latest k are positions ``n-k..n-1``).

    Args:
        support: ``{feature: [tasks, S, ...], "mask": [tasks, S]}``.

    Returns:
        The same support with ``mask [tasks, S]`` cut (tasks with n = 0 stay empty).
    """
    mask = support[MASK]
    n = tf.reduce_sum(tf.cast(mask, tf.float32), axis=1)
    u = tf.random.uniform(tf.shape(n))
    k = tf.clip_by_value(tf.floor(tf.pow(n + 1.0, u)), 1.0, tf.maximum(n, 1.0))
    pos = tf.cast(tf.range(tf.shape(mask)[1]), tf.float32)[None, :]
    keep = tf.cast(pos >= (n - k)[:, None], mask.dtype)
    return dict(support, **{MASK: mask * keep})


def query_embeddings(model: LimamlModel, adapted: Params, batch: Mapping[str, Mapping[str, tf.Tensor]],
                     aggregation: Optional[str], support_meta_x: Optional[tf.Tensor] = None
                     ) -> tf.Tensor:
    """Meta embeddings used for the query set, ``[tasks, Q, E]``.

    Per-sample f(x_meta,q; θ_u) when ``aggregation`` is None, else the aggregate of
    f(x_meta,s; θ_u) over the valid support positions, broadcast to every query sample.
    """
    act = model.model_cfg.activation
    history = model.history_vector(batch[SUPPORT])
    q_x = model.meta_x(batch[QUERY], history)
    if aggregation is None:
        return meta_forward(adapted, q_x, act)
    s_x = model.meta_x(batch[SUPPORT], history) if support_meta_x is None else support_meta_x
    agg = aggregate(meta_forward(adapted, s_x, act), batch[SUPPORT][MASK], aggregation)
    return tf.broadcast_to(agg[:, None, :], tf.concat([tf.shape(q_x)[:2], tf.shape(agg)[1:]], 0))


def maml_loss(model: LimamlModel, batch: Mapping[str, Mapping[str, tf.Tensor]],
              maml_cfg: Optional[MamlConfig] = None, training: bool = True
              ) -> Tuple[tf.Tensor, tf.Tensor]:
    """Post-adaptation query loss.

    Args:
        model: the model.
        batch: task batch (see module docstring).
        maml_cfg: adaptation settings (default: ``model.maml_cfg``).
        training: apply the user-row dropout (``ModelConfig.user_id_dropout``); the L2 penalty
            on the batch's user rows is always part of ``loss``.

    Returns:
        ``(loss, per_task)``: scalar mean over tasks with a valid query position, and ``[tasks]``.
    """
    cfg = model.maml_cfg if maml_cfg is None else maml_cfg
    if training and cfg.support_sampling == "log_uniform":
        batch = dict(batch, **{SUPPORT: sample_support_sizes(batch[SUPPORT])})
    warm = None
    if training and cfg.cold_task_share > 0:  # cold-start tasks: no support, zero row
        mask = batch[SUPPORT][MASK]
        warm = tf.random.uniform(tf.shape(mask)[:1]) >= cfg.cold_task_share
        batch = dict(batch, **{SUPPORT: dict(batch[SUPPORT], **{
            MASK: mask * tf.cast(warm, mask.dtype)[:, None]})})
    s_x = model.meta_x(batch[SUPPORT], model.history_vector(batch[SUPPORT]))
    row, penalty = None, 0.0
    if model.user_emb is not None:
        row = model.user_rows(batch[SUPPORT][USER_HASH][:, 0])
        mcfg = model.model_cfg
        if training and mcfg.user_id_dropout > 0:
            keep = tf.random.uniform(tf.shape(row)[:1]) >= mcfg.user_id_dropout
            row = row * tf.cast(keep, row.dtype)[:, None]
        if warm is not None:
            row = row * tf.cast(warm, row.dtype)[:, None]
        if mcfg.user_id_l2 > 0:
            penalty = mcfg.user_id_l2 * tf.reduce_mean(tf.reduce_sum(tf.square(row), axis=-1))
    adapted = adapt(model, batch[SUPPORT], cfg.adaptation_steps, cfg.first_order,
                    support_meta_x=s_x, user_row=row)
    emb = query_embeddings(model, adapted, batch, cfg.train_aggregation, support_meta_x=s_x)
    q = batch[QUERY]
    if model.genre_params:
        from trainer import genre_block  # noqa: PLC0415  (genre_block imports this module)
        support_emb = meta_forward(adapted, s_x, model.model_cfg.activation)
        emb = tf.concat([emb, genre_block.query_genre_embeddings(
            model, batch[SUPPORT], support_emb, q, cfg.adaptation_steps, cfg.first_order)], -1)
    logits = global_forward(model.global_params, emb, q, model.layout, model.model_cfg)
    per_task = masked_task_loss(logits, q[LABEL], q[MASK])
    has_q = tf.cast(tf.reduce_sum(tf.cast(q[MASK], per_task.dtype), axis=1) > 0, per_task.dtype)
    loss = tf.reduce_sum(per_task * has_q) / tf.maximum(tf.reduce_sum(has_q), 1.0)
    return loss + penalty, per_task


def outer_loss(model: LimamlModel, batch: Mapping[str, Mapping[str, tf.Tensor]],
               maml_cfg: Optional[MamlConfig] = None) -> tf.Tensor:
    """The meta-training objective (before ``outer_l2``): ``L_query(θ_u') + λ L_sup``.

    ``L_query`` is :func:`maml_loss`; ``L_sup`` is :func:`pretrain_loss` of the same batch,
    weighted by ``MamlConfig.supervised_weight`` λ (left out when λ = 0).
    """
    cfg = model.maml_cfg if maml_cfg is None else maml_cfg
    loss = maml_loss(model, batch, cfg)[0]
    if cfg.supervised_weight > 0:
        loss += tf.cast(cfg.supervised_weight, loss.dtype) * pretrain_loss(model, batch)
    return loss


def pretrain_loss(model: LimamlModel, batch: Mapping[str, Mapping[str, tf.Tensor]],
                  training: bool = True) -> tf.Tensor:
    """Supervised (non-meta) loss of the query rows: each row scored with its user's table row
    and no adaptation, as a DNN with a user-id embedding is trained (a multi-block model also
    reads its user × genre block's un-adapted embedding, ``[e_user, e_user×genre]``).

    Every interaction is a query row of about one task (``TaskConfig.first_split``), so an epoch
    of task batches is about one pass over the rows. With ``training``, the user rows of
    ``ModelConfig.user_id_dropout`` of the tasks are zeroed (the cold-start row).

    Returns:
        Scalar masked mean BCE over the valid query positions ``[tasks, Q]``.
    """
    q = batch[QUERY]
    params = model.meta_params_for(q)
    rate = model.model_cfg.user_id_dropout
    if USER_ROW in params and training and rate > 0:
        row = params[USER_ROW]  # [tasks, Q, d]
        keep = tf.random.uniform(tf.shape(row)[:1]) >= rate
        params[USER_ROW] = row * tf.cast(keep, row.dtype)[:, None, None]
    emb = meta_forward(params, model.meta_x(q), model.model_cfg.activation)
    genre = model.genre_embedding(q)  # multi-block: the user × genre block's, un-adapted too
    if genre is not None:
        emb = tf.concat([emb, tf.cast(genre, emb.dtype)], axis=-1)
    logits = global_forward(model.global_params, emb, q, model.layout, model.model_cfg)
    mask = tf.cast(q[MASK], logits.dtype)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(q[LABEL], logits.dtype),
                                                  logits=logits)
    return tf.reduce_sum(bce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


class Adam(tf.Module):
    """Adam over a fixed list of variables (slots are tf.Variables, so it checkpoints).

    m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;  θ ← θ − lr·√(1−β2^t)/(1−β1^t) · m/(√v + ε)

    Dense variables take the update in one fused kernel each (``ResourceApplyAdam``, the same
    rule); lazy tables and distributed variables take it op by op.
    """

    def __init__(self, variables: Sequence[tf.Variable], lr: float, beta1: float = 0.9,
                 beta2: float = 0.999, epsilon: float = 1e-7, name: str = "adam",
                 lazy: Sequence[tf.Variable] = ()):
        super().__init__(name=name)
        self.variables_ = list(variables)
        # Lazy tables (rows [n, d]): a row whose gradient is 0 keeps its value and moments, as
        # in LazyAdam; dense Adam keeps moving it on its decaying momentum.
        self._lazy = {id(v) for v in lazy}
        self.lr, self.beta1, self.beta2, self.epsilon = lr, beta1, beta2, epsilon
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False, name="m") for v in self.variables_]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False, name="v") for v in self.variables_]

    def apply(self, grads: Sequence[Optional[tf.Tensor]]) -> None:
        """Applies one Adam update; a variable whose gradient is None is skipped (its moments
        do not decay and it does not move, as in tf.keras.optimizers.Adam)."""
        self.iterations.assign_add(1)
        t = tf.cast(self.iterations, tf.float64)
        fused: Dict[tf.DType, Tuple[tf.Tensor, ...]] = {}  # per dtype: β1^t, β2^t, lr, β1, β2, ε
        for var, m, v, g in zip(self.variables_, self.m, self.v, grads):
            if g is None:
                continue
            g = tf.convert_to_tensor(g)
            dt = var.dtype
            if id(var) not in self._lazy and not isinstance(var, tf.distribute.DistributedValues):
                # the same update as below in one kernel per variable (TF's ApplyAdam: lr_t =
                # lr·√(1−β2^t)/(1−β1^t), ε outside the root), instead of ~15 small ops
                if dt not in fused:
                    fused[dt] = (tf.cast(self.beta1 ** t, dt), tf.cast(self.beta2 ** t, dt),
                                 *(tf.constant(x, dt) for x in (self.lr, self.beta1, self.beta2,
                                                                self.epsilon)))
                b1p, b2p, lr, b1, b2, eps = fused[dt]
                tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=b1p,
                                             beta2_power=b2p, lr=lr, beta1=b1, beta2=b2, epsilon=eps,
                                             grad=g)
                continue
            lr_t = tf.cast(self.lr * tf.sqrt(1.0 - self.beta2 ** t) / (1.0 - self.beta1 ** t), dt)
            new_m = self.beta1 * m + (1.0 - self.beta1) * g
            new_v = self.beta2 * v + (1.0 - self.beta2) * tf.square(g)
            step = lr_t * new_m / (tf.sqrt(new_v) + tf.cast(self.epsilon, dt))
            if id(var) in self._lazy:
                active = _touched_rows(g)
                new_m, new_v = tf.where(active, new_m, m), tf.where(active, new_v, v)
                step = tf.where(active, step, tf.zeros_like(step))
            m.assign(new_m)
            v.assign(new_v)
            var.assign_sub(step)


class NonFiniteLossError(FloatingPointError):
    """Raised when the outer loss or its gradient is NaN/Inf."""


class MamlTrainer(tf.Module):
    """Outer loop: Adam on θ_meta, θ_global (and Meta-SGD α) from the post-adaptation query loss.

    Create it (and the model) inside ``strategy.scope()`` when using a distribution strategy.
    ``jit_compile`` compiles the whole step (inner loop, outer gradient, Adam) with XLA.
    ``pretrain_lr`` enables :meth:`pretrain_step` (its own Adam, ``TrainConfig.pretrain_epochs``).
    """

    def __init__(self, model: LimamlModel, maml_cfg: Optional[MamlConfig] = None,
                 strategy: Optional[tf.distribute.Strategy] = None, name: str = "maml_trainer",
                 jit_compile: bool = False, pretrain_lr: Optional[float] = None):
        super().__init__(name=name)
        self.model = model
        self.maml_cfg = model.maml_cfg if maml_cfg is None else maml_cfg
        self.strategy = strategy or tf.distribute.get_strategy()
        lazy = [model.user_emb] if self.maml_cfg.lazy_user_rows and model.user_emb is not None else []
        self._lazy_ids = {id(v) for v in lazy}
        self.optimizer = Adam(model.outer_variables(), lr=self.maml_cfg.meta_lr, lazy=lazy)
        self._step_fn = tf.function(self._train_step, reduce_retracing=True,
                                    jit_compile=jit_compile, autograph=False)
        self.pretrain_optimizer = None
        if pretrain_lr is not None:  # variables created here, inside the caller's strategy scope
            self.pretrain_optimizer = Adam(self.pretrain_variables(), lr=pretrain_lr,
                                           name="pretrain_adam", lazy=lazy)
        self._pretrain_fn = tf.function(self._pretrain_step, reduce_retracing=True,
                                        autograph=False)
        # Called on flat tensors once traced: tf.function's per-call binding of the batch's
        # ~20 tensors cost ~1 ms a step (trainer.flat_call).
        self._step, self._pretrain = FlatCall(self._step_fn), FlatCall(self._pretrain_fn)

    def pretrain_variables(self) -> List[tf.Variable]:
        """What pre-training fits: the outer variables but the inner solver's own (Meta-SGD
        rates, the Gauss-Newton prior), which only meta-training can learn."""
        own = {id(v) for v in list(self.model.inner_lrs.values()) + [self.model.row_log_precision]
               if v is not None}
        return [v for v in self.model.outer_variables() if id(v) not in own]

    def _regularized_gradients(self, loss_fn: Callable[[], tf.Tensor], variables: List[tf.Variable]
                               ) -> Tuple[tf.Tensor, List[Optional[tf.Tensor]]]:
        """``loss_fn() + outer_l2 Σ w²`` and its gradient w.r.t. ``variables``.

        A lazy table (``MamlConfig.lazy_user_rows``) takes the penalty's gradient ``2 λ w`` only
        on the rows the loss touches, so rows of users outside the batch stay where they are.
        """
        l2 = self.maml_cfg.outer_l2
        penalized = {id(v) for v in self.model.l2_variables()}
        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = list(tape.gradient(loss, variables))
        if l2 > 0:
            # The penalty's value and gradient 2 λ w are added outside the tape: taped, the
            # whole-table penalty of a user-id table cost five passes over the table per step
            # (square, sum, a tiled upstream gradient, two products) plus a densified sum with
            # the gathered rows' gradient (main job: ~5 of the step's 12 ms).
            values = {id(v): tf.convert_to_tensor(v) for v in variables
                      if id(v) in penalized and id(v) not in self._lazy_ids}  # one read each
            if values:
                loss += l2 * 2.0 * tf.add_n([tf.nn.l2_loss(w) for w in values.values()])  # λ Σ w²
            for i, var in enumerate(variables):
                if id(var) not in penalized:
                    continue
                g = grads[i]
                if id(var) in self._lazy_ids:  # the penalty on the rows the loss touches
                    if g is not None:
                        g = tf.convert_to_tensor(g)
                        grads[i] = g + tf.cast(_touched_rows(g), var.dtype) * (2.0 * l2) * var
                    continue
                decay = (2.0 * l2) * values[id(var)]
                if g is None:
                    grads[i] = decay
                elif isinstance(g, tf.IndexedSlices):  # gathered rows: added into the decay
                    grads[i] = tf.tensor_scatter_nd_add(decay, g.indices[:, None], g.values)
                else:
                    grads[i] = decay + g
        grads = [None if g is None else tf.convert_to_tensor(g) for g in grads]
        return loss, grads

    def _apply_if_finite(self, gradients_fn, batch, optimizer: "Adam"):
        """Runs ``gradients_fn(batch)`` on every replica, averages, and applies the update with
        ``optimizer`` only when the loss and every gradient are finite; ``(loss, finite)``."""
        strategy = self.strategy
        loss, grads = strategy.run(gradients_fn, args=(batch,))
        loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)
        grads = [None if g is None else strategy.reduce(tf.distribute.ReduceOp.MEAN, g, axis=None)
                 for g in grads]
        finite = tf.math.is_finite(tf.cast(loss, tf.float64))
        for g in grads:
            if g is not None:
                finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
        def apply() -> tf.Tensor:
            optimizer.apply(grads)
            return tf.constant(True)

        tf.cond(finite, apply, lambda: tf.constant(False))  # the step is traced without autograph
        return loss, finite

    def pretrain_gradients(self, batch) -> Tuple[tf.Tensor, List[Optional[tf.Tensor]]]:
        """:func:`pretrain_loss` (plus ``outer_l2 Σ w²``) and its gradient w.r.t.
        :meth:`pretrain_variables`."""
        return self._regularized_gradients(lambda: pretrain_loss(self.model, batch),
                                           self.pretrain_variables())

    def _pretrain_step(self, batch):
        return self._apply_if_finite(self.pretrain_gradients, batch, self.pretrain_optimizer)

    def pretrain_step(self, batch) -> float:
        """One supervised step before meta-training (needs ``pretrain_lr`` at construction):
        every query row scored with its user's table row, no adaptation, so the item and user
        representations are fitted on every row first (:func:`pretrain_loss`).

        Raises:
            NonFiniteLossError: the loss or a gradient is NaN/Inf (no update is applied).
        """
        if self.pretrain_optimizer is None:
            raise ValueError("this MamlTrainer was built without pretrain_lr; pass "
                             "MamlTrainer(..., pretrain_lr=TrainConfig.pretrain_lr)")
        loss, finite = self._pretrain(batch)
        if not bool(finite):
            step = int(self.pretrain_optimizer.iterations.numpy()) + 1
            raise NonFiniteLossError(f"non-finite pre-training loss at step {step}: loss="
                                     f"{float(loss)} (lower TrainConfig.pretrain_lr or check the inputs)")
        return float(loss)

    def meta_gradients(self, batch) -> Tuple[tf.Tensor, List[Optional[tf.Tensor]]]:
        """Outer loss (plus ``outer_l2 Σ w²``) and its gradient w.r.t. ``model.outer_variables()``.

        The outer loss is :func:`maml_loss`, plus ``MamlConfig.supervised_weight`` λ times
        :func:`pretrain_loss` of the same batch when λ > 0.
        """
        return self._regularized_gradients(lambda: outer_loss(self.model, batch, self.maml_cfg),
                                           self.model.outer_variables())

    def _train_step(self, batch):
        return self._apply_if_finite(self.meta_gradients, batch, self.optimizer)

    def train_step(self, batch, step: Optional[int] = None) -> float:
        """One outer step (one tf.function, all tasks batched); returns the loss.

        Raises:
            NonFiniteLossError: the loss or a gradient is NaN/Inf (no update is applied).
        """
        loss, finite = self._step(batch)
        loss = float(loss)
        if not bool(finite):
            step = int(self.optimizer.iterations.numpy()) + 1 if step is None else step
            raise NonFiniteLossError(
                f"non-finite meta-training loss at step {step}: loss={loss} "
                f"(loss or meta-gradient is NaN/Inf; lower meta_lr/inner_lr or check the inputs)")
        return loss

    def fit(self, batches: Iterable, steps: int, log_every: int = 50,
            on_step: Optional[Callable[[int, float], None]] = None) -> List[float]:
        """Runs up to ``steps`` outer steps over ``batches``; logs progress; returns the losses."""
        losses: List[float] = []
        start = time.time()
        it = iter(batches)
        for i in range(steps):
            try:
                batch = next(it)
            except StopIteration:
                break
            step = int(self.optimizer.iterations.numpy()) + 1
            losses.append(self.train_step(batch, step=step))
            if on_step is not None:
                on_step(step, losses[-1])
            if log_every and (step % log_every == 0 or i == steps - 1):
                recent = losses[-log_every:]
                log.info("maml step %d: query loss %.4f (mean of last %d %.4f), %.1f steps/s",
                         step, losses[-1], len(recent), float(np.mean(recent)),
                         (i + 1) / max(time.time() - start, 1e-9))
        return losses
