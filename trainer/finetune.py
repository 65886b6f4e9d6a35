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

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from limaml.config import MamlConfig
from trainer.flat_call import FlatCall
from trainer.layout import MASK, USER_HASH
from trainer.maml import LABEL, adapt, aggregate
from trainer.model import LimamlModel, history_width, meta_forward


def generate_meta_embeddings_fn(model: LimamlModel, support: Mapping[str, tf.Tensor],
                                mask: tf.Tensor, aggregation: str, adaptation_steps: int,
                                inner_lr: Optional[float] = None,
                                min_support: Optional[int] = None,
                                row_shrinkage: Optional[float] = None) -> tf.Tensor:
    """Traceable body of :func:`generate_meta_embeddings` (no Python loop over users).

    Args:
        model: the trained model (θ_meta, θ_global, α are read, never written).
        support: ``{feature: [users, S, ...], "label": [users, S]}`` encoded support sets.
        mask: ``[users, S]`` valid support positions (time-ordered, padding after).
        aggregation: ``"latest"``, ``"mean"`` or ``"max"``.
        adaptation_steps: inner steps k.
        inner_lr: fixed α overriding the model's (ignored when the model learned Meta-SGD rates).
        min_support: users with fewer valid support rows keep the un-adapted embedding
            (default: the model's ``MamlConfig.meg_min_support``).
        row_shrinkage: κ_r: with a user-id embedding, a user with n valid support rows starts
            from ``n / (n + κ_r)`` times its table row (0: the full row; default: the model's
            ``MamlConfig.meg_row_shrinkage``).

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
    if min_support is None:
        min_support = model.maml_cfg.meg_min_support
    if row_shrinkage is None:
        row_shrinkage = model.maml_cfg.meg_row_shrinkage
    row = None
    if model.user_emb is not None and row_shrinkage > 0:
        n = tf.reduce_sum(tf.cast(part[MASK] > 0, model.dtype), axis=1)  # [users]
        row = model.user_rows(part[USER_HASH][:, 0]) * (n / (n + row_shrinkage))[:, None]
    adapted = adapt(model, part, adaptation_steps, first_order=True, inner_lrs=lrs,
                    support_meta_x=s_x, min_support=min_support, user_row=row)
    act = model.model_cfg.activation
    emb = tf.stop_gradient(aggregate(meta_forward(adapted, s_x, act), part[MASK], aggregation))
    cold = meta_forward(model.meta_params_for({k: v[:, 0] for k, v in part.items()}),
                        s_x[:, 0, :], act)
    has_any = tf.reduce_any(part[MASK] > 0, axis=1)
    return tf.where(has_any[:, None], emb, cold)


_FN_CACHE: Dict[Tuple, object] = {}

# Fast path of :func:`generate_meta_embeddings` (same embeddings, less work). Every user's grid
# is cut after its last valid position: users are grouped by the smallest width of the ladder
# (``WIDTH_LADDER``, then S) that holds their valid positions, and each group runs in chunks of
# ``CHUNK_ROWS // width`` users, the last chunk as it is (no padding): the kernel is one graph,
# traced once for any shape (see :func:`_kernel`). Masked positions after a user's last valid
# one contribute nothing to any masked reduction of the kernel (losses, history summary,
# aggregation) and each user's computation is independent of the other users', so the result is
# the padded grid's up to float rounding (~1e-7). Calls with fewer than ``FAST_PATH_MIN_USERS``
# users, or not eager, run the whole grid in one call.
#
# Measured (ML-100K model, synthetic users with ~9 rows of 32): this runs ~11 rows per user
# where fixed-shape chunks padded to the ladder's widths ran 16; XLA-compiling those fixed
# shapes gained ~5% per call and cost ~1 s of compiles per process, so the graph without
# padding is as fast at 1M users and ~10% faster at 100-200k (benchmarks/results/README.md).
WIDTH_LADDER: Tuple[int, ...] = (4, 8, 16, 32, 64)
"""Widths under S the fast path cuts users' grids to (widths >= S are skipped): with
``EmbeddingConfig.max_recent`` 128 a user with 20 rows runs at width 32, not 128. Narrower
steps cost more than they save: a user's own work (its adapted weights) does not shrink."""
CHUNK_ROWS = 8192
"""Rows per fast-path kernel call: a group of width w runs ``CHUNK_ROWS // w`` users per call."""
FAST_PATH_MIN_USERS = 512


def _meg_body(model: LimamlModel, aggregation: str, cfg: MamlConfig):
    """``(support, mask) -> [users, E]``: :func:`generate_meta_embeddings_fn` with ``cfg``'s
    settings (a fixed α unless the model learned Meta-SGD rates)."""
    inner_lr = None if model.inner_lrs else cfg.inner_lr

    def body(support, mask_):
        return generate_meta_embeddings_fn(model, support, mask_, aggregation,
                                           cfg.adaptation_steps, inner_lr,
                                           cfg.meg_min_support, cfg.meg_row_shrinkage)
    return body


def _cache_key(kind: str, model: LimamlModel, aggregation: str, cfg: MamlConfig, signature
               ) -> Tuple:
    return (kind, id(model), aggregation, cfg.adaptation_steps, cfg.inner_lr,
            cfg.meg_min_support, cfg.meg_row_shrinkage, signature)


def _kernel(model: LimamlModel, aggregation: str, cfg: MamlConfig, signature=None):
    """The cached tf.function of :func:`generate_meta_embeddings_fn` for one model and setting.

    ``signature``: ``((feature, dtype, rank), ...)`` of the support dict; the function is then
    traced once for any batch and window size (no retracing on ragged batches).
    """
    key = _cache_key("grid", model, aggregation, cfg, signature)
    fn = _FN_CACHE.get(key)
    if fn is None:
        spec = None if signature is None else (_specs(signature),
                                               tf.TensorSpec([None, None], tf.float32))
        fn = FlatCall(tf.function(_meg_body(model, aggregation, cfg), input_signature=spec,
                                  reduce_retracing=spec is None, autograph=False))
        _FN_CACHE[key] = fn
    return fn


def _widths(mask: np.ndarray, ladder: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Per user, the index into ``widths`` of the narrowest width holding its valid positions.

    Returns:
        ``(widths [W]: the ladder's widths under S, then S; bucket [U])``; a user without a
        valid position needs width 1 (the cold-start output reads position 0).
    """
    s = mask.shape[1]
    valid = mask > 0
    need = np.where(valid.any(axis=1), s - np.argmax(valid[:, ::-1], axis=1), 1)
    widths = np.array(sorted({int(w) for w in ladder if 0 < w < s}) + [s], np.int64)
    return widths, np.searchsorted(widths, need)


def _chunk_plan(mask: np.ndarray, ladder: Sequence[int], chunk_rows: int
                ) -> List[Tuple[int, np.ndarray]]:
    """Kernel calls covering every user once (no loop over users, no padding).

    Returns:
        ``[(width, user indices [n])]``: each user in exactly one call, at the narrowest width
        of ``ladder`` (then S) holding its valid positions; at most ``max(1, chunk_rows //
        width)`` users per call.
    """
    widths, bucket = _widths(mask, ladder)
    order = np.argsort(bucket, kind="stable")
    ends = np.cumsum(np.bincount(bucket, minlength=widths.shape[0]))
    plan: List[Tuple[int, np.ndarray]] = []
    for b, width in enumerate(widths.tolist()):
        users = order[(ends[b - 1] if b else 0):ends[b]]
        chunk = max(1, chunk_rows // width)
        plan.extend((width, users[lo:lo + chunk]) for lo in range(0, users.shape[0], chunk))
    return plan


def _check_ids(model: LimamlModel, support: Mapping[str, np.ndarray]) -> None:
    """Ids the kernel gathers with must be in range (named here, before any kernel call)."""
    ranges = list(model.layout.global_categorical)
    if model.user_emb is not None:
        ranges.append((USER_HASH, int(model.user_emb.shape[0])))
    for name, size in ranges:
        v = support.get(name)
        if v is not None and v.size and (v.min() < 0 or v.max() >= size):
            raise ValueError(f"support feature {name!r} has ids outside [0, {size}) "
                             f"(min {v.min()}, max {v.max()}): encode it with the model's vocabulary")


ChunkReader = Callable[[np.ndarray, int], Dict[str, np.ndarray]]
"""``take(users [n], width) -> {feature: [n, width, ...]}``: the support grid of some users, cut
at ``width`` positions (zeros where masked)."""


ChunkCall = Callable[[np.ndarray, int], tf.Tensor]
"""``call(users [n], width) -> [n, E]``: the kernel on some users' support grids cut at ``width``."""


def _fast_embeddings(call: ChunkCall, mask: np.ndarray) -> np.ndarray:
    """Width-grouped chunks through the kernel (see ``WIDTH_LADDER``)."""
    out: Optional[np.ndarray] = None
    for width, idx in _chunk_plan(mask, WIDTH_LADDER, CHUNK_ROWS):
        emb = call(idx, width).numpy()
        if out is None:
            out = np.empty((mask.shape[0],) + emb.shape[1:], emb.dtype)
        out[idx] = emb
    return out


def _grid_call(model: LimamlModel, take: ChunkReader,
               signature: Tuple[Tuple[str, tf.DType, int], ...], mask: np.ndarray,
               aggregation: str, cfg: MamlConfig) -> ChunkCall:
    """Chunks gathered in numpy (``take``) and fed to the kernel."""
    fn = _kernel(model, aggregation, cfg, signature)

    def call(idx: np.ndarray, width: int) -> tf.Tensor:
        part = {k: tf.convert_to_tensor(v) for k, v in take(idx, width).items()}
        return fn(part, tf.convert_to_tensor(mask[idx, :width]))
    return call


def _row_kernel(model: LimamlModel, aggregation: str, cfg: MamlConfig,
                signature: Tuple[Tuple[str, tf.DType, int], ...]):
    """The cached kernel on flat rows: ``fn(rows {feature: [N, ...]}, index [U, S], mask [U, S],
    users [n], width [])`` takes the chunk's users' windows cut at ``width`` and gathers their
    grid in the graph (padding zeroed, position 0 kept: it carries a cold user's meta
    features), then runs :func:`generate_meta_embeddings_fn`. A batch's rows, index and mask
    go to TensorFlow once; a chunk sends only its user indices."""
    key = _cache_key("rows", model, aggregation, cfg, signature)
    fn = _FN_CACHE.get(key)
    if fn is None:
        meg = _meg_body(model, aggregation, cfg)

        def body(rows, index_all, mask_all, users, width):
            index = tf.gather(index_all, users)[:, :width]                            # [n, w]
            mask_ = tf.gather(mask_all, users)[:, :width]
            keep = (mask_ > 0) | tf.equal(tf.range(tf.shape(index)[1]), 0)[None, :]  # [n, w]
            support = {}
            for k, v in rows.items():
                grid = tf.gather(v, index)                                            # [n, w, ...]
                m = tf.reshape(keep, tf.concat([tf.shape(keep), tf.ones([v.shape.rank - 1],
                                                                        tf.int32)], 0))
                support[k] = tf.where(m, grid, tf.zeros_like(grid))
            return meg(support, mask_)

        spec = (_specs(signature),
                tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None, None], tf.float32),
                tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int32))
        fn = FlatCall(tf.function(body, input_signature=spec, autograph=False))
        _FN_CACHE[key] = fn
    return fn


def embeddings_from_rows(model: LimamlModel, rows: Mapping[str, np.ndarray], index: np.ndarray,
                         mask: np.ndarray, aggregation: str = "mean",
                         maml_cfg: Optional[MamlConfig] = None) -> np.ndarray:
    """:func:`generate_meta_embeddings` on support sets given as rows of flat columns.

    No ``[users, S, ...]`` grid is built: each kernel chunk gathers its own ``[n, width, ...]``
    grid from ``rows`` (MEG's support windows are row ranges of a user batch).

    Args:
        model: the trained model.
        rows: ``{feature: [N, ...]}`` encoded rows (``label`` included).
        index: int ``[users, S]``: the row of each support position; where masked any row,
            but position 0 of a user with no valid position must be a row with the user's
            meta features (its cold-start output reads them).
        mask: ``[users, S]`` valid positions.
        aggregation: ``"latest"`` | ``"mean"`` | ``"max"``.
        maml_cfg: as for :func:`generate_meta_embeddings`.

    Returns:
        ``[users, E]``, what :func:`generate_meta_embeddings` gives on the gathered grid.
    """
    cfg = model.maml_cfg if maml_cfg is None else maml_cfg
    rows = {k: np.asarray(v) for k, v in rows.items() if k != MASK}
    mask = np.asarray(mask, np.float32)

    _check_ids(model, rows)
    # Rows go to TensorFlow once per call; each chunk's grid is gathered in the graph.
    signature = _signature(rows)
    fn = _row_kernel(model, aggregation, cfg, signature)
    tensors = {k: tf.convert_to_tensor(v) for k, v in rows.items()}
    index_t = tf.convert_to_tensor(np.asarray(index, np.int64))
    mask_t = tf.convert_to_tensor(mask)

    def call(users: np.ndarray, width: int) -> tf.Tensor:
        return fn(tensors, index_t, mask_t, np.asarray(users, np.int64), np.asarray(width, np.int32))
    if mask.shape[0] < FAST_PATH_MIN_USERS:  # one call on the whole grid
        return call(np.arange(mask.shape[0]), mask.shape[1]).numpy()
    return _fast_embeddings(call, mask)


def _signature(support: Mapping[str, object]) -> Tuple[Tuple[str, tf.DType, int], ...]:
    return tuple((k, tf.as_dtype(v.dtype), len(v.shape)) for k, v in sorted(support.items()))


def _specs(signature: Tuple[Tuple[str, tf.DType, int], ...]) -> Dict[str, tf.TensorSpec]:
    """Input specs of a :func:`_signature`: every dimension of any size."""
    return {k: tf.TensorSpec([None] * rank, dtype) for k, dtype, rank in signature}


def generate_meta_embeddings(model: LimamlModel, support_batch: Mapping[str, tf.Tensor],
                             mask: tf.Tensor, aggregation: str = "mean",
                             maml_cfg: Optional[MamlConfig] = None) -> tf.Tensor:
    """Fine-tunes the meta block on each user's support set and aggregates (batched kernel).

    Large eager calls take the fast path (grids cut to each user's last valid position, grouped
    by width; see ``WIDTH_LADDER``), small ones one call on the whole grid; both give
    :func:`generate_meta_embeddings_fn` on the whole padded grid, up to float rounding.

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
    support = {k: v for k, v in support_batch.items() if k != MASK}
    shape = tuple(mask.shape) if tf.executing_eagerly() and hasattr(mask, "shape") else None
    if shape is not None and len(shape) == 2 and int(shape[0]) >= FAST_PATH_MIN_USERS:
        arrays = {k: np.asarray(v) for k, v in support.items()}
        _check_ids(model, arrays)
        mask = np.asarray(mask, np.float32)
        return tf.convert_to_tensor(_fast_embeddings(_grid_call(
            model, lambda idx, width: {k: v[idx, :width] for k, v in arrays.items()},
            _signature(arrays), mask, aggregation, cfg), mask))
    tensors = {k: tf.convert_to_tensor(v) for k, v in support.items()}
    mask = tf.cast(tf.convert_to_tensor(mask), tf.float32)
    sig = _signature(tensors) if tf.executing_eagerly() else None
    return _kernel(model, aggregation, cfg, sig)(tensors, mask)


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
    prefix = tf.broadcast_to(tf.cast(user_emb, model.dtype)[:, None, :],
                             tf.concat([tf.shape(part[MASK]), tf.shape(user_emb)[1:]], 0))  # [U, S, E]
    theta, rows = genre_block.adapt_subtasks(model, part, genres, prefix,
                                             model.maml_cfg.adaptation_steps, first_order=True)
    # the entity's row: u's meta features (row 0) with genre g as its only genre
    name, buckets = model.layout.global_multi_hot[0]
    first = {c: tf.repeat(v[:, :1], k, axis=0) for c, v in part.items() if c != MASK}  # [U·K, 1, ...]
    first[name] = tf.one_hot(tf.reshape(genres, [-1, 1]), buckets, dtype=first[name].dtype)
    emb = genre_block.genre_slot(model, theta, model.genre_x(first), rows)[:, 0]  # [U·K, E]
    if model.model_cfg.genre_combine == "residual":
        # no row of the genre: θ is θ_g, so Δ is 0; set it exactly (the two forward passes,
        # batched and shared weights, may round differently in the last bit)
        same = tf.equal(genre_block.primary_genre(part)[:, None, :], genres[:, :, None])  # [U, K, S]
        has_rows = tf.reshape(tf.reduce_any(same & (part[MASK] > 0)[:, None, :], axis=2), [-1])  # [U·K]
        emb = tf.where(has_rows[:, None], emb, tf.zeros_like(emb))
    return tf.stop_gradient(tf.reshape(emb, tf.concat([tf.shape(genres), [-1]], 0)))


def cold_start_outputs(model: LimamlModel, meta_features: Mapping[str, np.ndarray]) -> np.ndarray:
    """:func:`cold_start_embedding` of encoded meta features ``{feature: [users]}`` as numpy
    ``[users, E]``, through one cached traced function per model (MEG calls it once per kernel
    batch; eagerly its ~40 small ops cost more than the arithmetic)."""
    arrays = {k: np.asarray(v) for k, v in meta_features.items()}
    signature = _signature(arrays)
    key = ("cold", id(model), signature)
    fn = _FN_CACHE.get(key)
    if fn is None:  # traced once for any number of users
        spec = (_specs(signature),)
        fn = FlatCall(tf.function(lambda feats: cold_start_embedding(model, feats),
                                  input_signature=spec, autograph=False))
        _FN_CACHE[key] = fn
    return fn(arrays).numpy()


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
