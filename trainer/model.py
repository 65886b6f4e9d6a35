"""The LiMAML network: a meta block f(x_meta; θ_meta) and a global block g(e, x; θ_global).

Parameters are plain tensors held in dicts so that the MAML inner loop can run the same
functions on per-task copies of θ_meta (tensors with a leading task dimension) without ever
assigning to a ``tf.Variable``.

Meta block (MLP, ``L = len(meta_hidden)`` hidden layers)::

    h_0 = meta_x                                   [tasks, n, D]
    h_{l+1} = act(h_l @ W_l + b_l[:, None])       (batched matmul over tasks)
    e = h_L @ W_L + b_L[:, None]                   [tasks, n, E]

Global block::

    z = [e, emb_f(x_f) for global categorical f, multi-hot, numeric]   [..., F]
    (optional DCN-v2 cross layers: z_{k+1} = z_0 * (z_k W_k + b_k) + z_k)
    logit = MLP(z)                                                     [...]

References:
    LiMAML (arXiv:2403.00803) §3.1: meta block / global block split, ID embeddings in the
    meta block. DCN-v2: Wang et al., Improved Deep & Cross Network (arXiv:2008.13535) §3.2, eq. 1
    (cross layers). Wide part: Cheng et al., Wide & Deep Learning (arXiv:1606.07792) §3.
    The history summary follows the neural-process encoders (Garnelo et al., Conditional
    Neural Processes, arXiv:1807.01613, §2.4: a permutation-invariant mean over the context set).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf

from limaml.config import MamlConfig, ModelConfig
from schema import features
from trainer.global_block import (  # noqa: F401 (re-exported: the global block's public names)
    DOT_PROJ,
    dot_interaction,
    global_forward,
    init_global_params,
    wide_logit,
)
from trainer.layout import MASK, USER_HASH, FeatureLayout
from trainer.nn_ops import _act, _dot, _glorot  # noqa: F401 (_dot re-exported)

Params = Dict[str, tf.Tensor]
USER_ROW = "user_row"  # θ_meta entry of a task's own user-id embedding row
# (user, genre) row index: pair key · multiplier mod a prime (Knuth's multiplicative constant,
# the Mersenne prime 2³¹ − 1); keys < 2²⁴ keep the product inside int64.
_GENRE_ROW_MULTIPLIER = 2654435761
_GENRE_ROW_PRIME = 2147483647
Features = Mapping[str, tf.Tensor]


def meta_param_names(num_hidden: int) -> List[str]:
    """Names of θ_meta in layer order: ``w0, b0, ..., w{L}, b{L}``."""
    return [f"{k}{i}" for i in range(num_hidden + 1) for k in ("w", "b")]


def meta_input(feats: Features, layout: FeatureLayout, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Dense meta input: concat of meta one-hots, multi-hots, numerics [+ user-hash one-hot].

    Args:
        feats: encoded features with leading dims ``[...]`` (e.g. ``[tasks, support]``).
        layout: the feature layout.
        dtype: output dtype.

    Returns:
        meta_x ``[..., D]`` with ``D = layout.meta_dim``.
    """
    parts = []
    for name, vocab in layout.meta_categorical:
        parts.append(tf.one_hot(tf.cast(feats[name], tf.int64), vocab, dtype=dtype))
    for name, _ in layout.meta_multi_hot:
        parts.append(tf.cast(feats[name], dtype))
    for name in layout.meta_numeric:
        parts.append(tf.cast(feats[name], dtype)[..., None])
    if layout.use_user_id_in_meta:
        parts.append(tf.one_hot(tf.cast(feats[USER_HASH], tf.int64), layout.user_id_buckets,
                                dtype=dtype))
    return tf.concat(parts, axis=-1)


def primary_genre(multi_hot: tf.Tensor) -> tf.Tensor:
    """Primary genre bucket ``[...]`` (int64) of genre multi-hots ``[..., G]``: the lowest set
    bucket (the entity of the user × genre block)."""
    return tf.argmax(tf.cast(multi_hot, tf.float32), axis=-1)


def history_width(layout: FeatureLayout, model_cfg: ModelConfig) -> int:
    """Width of :func:`history_summary`: ``2 (C_h + G)`` (label-split) or ``C_h + G``
    (``history_labels=False``), 0 without a history encoder."""
    if model_cfg.history_dim == 0:
        return 0
    return (2 if model_cfg.history_labels else 1) * (
        model_cfg.history_dim + sum(b for _, b in layout.global_multi_hot))


def history_summary(support: Features, history_emb: tf.Tensor, layout: FeatureLayout,
                    labels: bool = True) -> tf.Tensor:
    """Label-split, shrunk means of the support items' representations.

    With ``r_s = [H[item_s], multi-hot_s]`` and valid positions ``m_s``::

        h = [ Σ_s m_s y_s r_s / (1 + Σ_s m_s y_s),  Σ_s m_s (1 − y_s) r_s / (1 + Σ_s m_s (1 − y_s)) ]

    The ``1 +`` shrinks the mean of a few rows toward 0, the cold-start value. With
    ``labels=False`` (implicit feedback: which items the user chose, not how it rated them) one
    shrunk mean over every valid row, ``Σ_s m_s r_s / (1 + Σ_s m_s)``, ``[tasks, C_h + G]``.

    Args:
        support: ``{item_id: [tasks, S], <multi-hot>: [tasks, S, G], label: [tasks, S],
            mask: [tasks, S]}``.
        history_emb: item representations ``H [items, C_h]``.
        layout: the feature layout (which multi-hots).

    Returns:
        ``[tasks, 2 (C_h + G)]``.
    """
    dtype = history_emb.dtype
    parts = [tf.gather(history_emb, tf.cast(support[features.ITEM_ID], tf.int64))]
    parts += [tf.cast(support[name], dtype) for name, _ in layout.global_multi_hot]
    r = tf.concat(parts, axis=-1)
    m = tf.cast(support[MASK], dtype)
    y = tf.cast(support[features.LABEL], dtype)
    out = []
    for w in ((m * y, m * (1.0 - y)) if labels else (m,)):
        total = tf.reduce_sum(w[..., None] * r, axis=1)
        out.append(total / (1.0 + tf.reduce_sum(w, axis=1))[:, None])
    return tf.concat(out, axis=-1)


def meta_forward(meta_params: Mapping[str, tf.Tensor], meta_x: tf.Tensor,
                 activation: str = "relu",
                 on_layer: Optional[Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = None) -> tf.Tensor:
    """Meta block forward pass, batched over tasks.

    Args:
        meta_params: ``w{l}`` / ``b{l}`` tensors and, with a user-id embedding, ``user_row``
            (the user's embedding row, the last input of layer 0). With a leading task dim
            (``W [tasks, d_in, h]``, ``b [tasks, h]``, ``user_row [tasks, d]``) meta_x must be
            ``[tasks, n, D]``; without it (``W [d_in, h]``, ``user_row [..., d]`` with meta_x's
            leading dims) meta_x may have any leading dims.
        meta_x: dense meta input ``[tasks, n, D]`` (or ``[..., D]`` for shared params).
        activation: hidden activation.
        on_layer: called as ``on_layer(h_l, z_l)`` with each layer's input and pre-activation
            ``z_l = h_l W_l + b_l``; its return value goes on as ``z_l`` (e.g. watched by a tape).

    Returns:
        Meta embeddings ``[tasks, n, E]`` (or ``[..., E]``).
    """
    num_layers = sum(1 for k in meta_params if k.startswith("w"))
    act = _act(activation)
    h = meta_x
    row = meta_params.get(USER_ROW)
    if row is not None:
        row = tf.cast(row, h.dtype)
        if row.shape.rank == h.shape.rank - 1:  # per-task row, shared by the task's n samples
            row = tf.broadcast_to(row[:, None, :], tf.concat([tf.shape(h)[:-1], tf.shape(row)[-1:]], 0))
        h = tf.concat([h, row], axis=-1)
    for i in range(num_layers):
        w, b = meta_params[f"w{i}"], meta_params[f"b{i}"]
        if w.shape.rank == 3:
            # [tasks, n, d] @ [tasks, d, h]: BatchMatMul, and its gradients are BatchMatMuls;
            # tf.einsum's kernels took 2.6x as long here (bench train --profile, CPU)
            z = tf.linalg.matmul(h, w) + b[:, None, :]
        else:
            z = _dot(h, w) + b
        if on_layer is not None:
            z = on_layer(h, z)
        h = z
        if i < num_layers - 1:
            h = act(h)
    return h


def table_rows(table: tf.Variable, rows: tf.Tensor) -> tf.Tensor:
    """``table[rows]`` ``[..., d]``, gathered from one dense read of the table.

    A gather straight from the variable (``ResourceGather``) puts it in copy-on-read mode for
    good: every later dense read (the L2 penalty, Adam) then copies the whole table, 8 MB per
    read for the default 131,072 × 16 user table. The gradient is the same ``IndexedSlices``.
    """
    return tf.gather(tf.convert_to_tensor(table), rows)


def init_meta_params(rng: np.random.RandomState, layout: FeatureLayout,
                     model_cfg: ModelConfig) -> Dict[str, np.ndarray]:
    """Initial values of θ_meta (numpy)."""
    out: Dict[str, np.ndarray] = {}
    width = (layout.meta_dim + history_width(layout, model_cfg)
             + model_cfg.user_id_embedding_dim)
    for i, h in enumerate(tuple(model_cfg.meta_hidden) + (model_cfg.embedding_dim,)):
        out[f"w{i}"] = _glorot(rng, width, h)
        out[f"b{i}"] = np.zeros(h)
        width = h
    return out


class LimamlModel(tf.Module):
    """θ_meta, θ_global and (Meta-SGD) the learned inner learning rates, as tf.Variables.

    Attributes:
        layout: the feature layout.
        model_cfg: the model config.
        maml_cfg: the MAML config (inner_lr, learn_inner_lr).
        meta_params: θ_meta, ``{w0, b0, ..., wL, bL}``.
        global_params: θ_global.
        inner_lrs: Meta-SGD per-entry inner learning rates (same shapes as θ_meta); empty
            unless ``maml_cfg.learn_inner_lr``.
    """

    def __init__(self, layout: FeatureLayout, model_cfg: ModelConfig, maml_cfg: MamlConfig,
                 seed: int = 0, dtype: tf.DType = tf.float32, name: str = "limaml"):
        super().__init__(name=name)
        self.layout = layout
        self.model_cfg = model_cfg
        self.maml_cfg = maml_cfg
        self.dtype = dtype
        rng = np.random.RandomState(seed)
        self.meta_names = meta_param_names(len(model_cfg.meta_hidden))
        meta0 = init_meta_params(rng, layout, model_cfg)
        blocks = len(model_cfg.meta_blocks) if model_cfg.genre_combine == "concat" else 1
        glob0 = init_global_params(rng, layout, model_cfg, model_cfg.embedding_dim * blocks)
        self.meta_params = {k: tf.Variable(v, dtype=dtype, name=f"meta_{k}")
                            for k, v in meta0.items()}
        self.user_emb = None
        if model_cfg.user_id_embedding_dim > 0:
            self.user_emb = tf.Variable(
                tf.zeros([layout.user_id_buckets, model_cfg.user_id_embedding_dim], dtype),
                name="meta_user_emb")
        self.row_log_precision = None  # log Λ of the Gauss-Newton inner solver
        if maml_cfg.inner_solver == "gauss_newton":
            if self.user_emb is None:
                raise ValueError("inner_solver 'gauss_newton' adapts the user-id row; set "
                                 "ModelConfig.user_id_embedding_dim > 0 or inner_solver='sgd'")
            self.row_log_precision = tf.Variable(
                tf.fill([model_cfg.user_id_embedding_dim],
                        tf.constant(np.log(maml_cfg.row_prior_precision), dtype)),
                name="meta_row_log_precision")
        self.history_emb = None
        if model_cfg.history_dim > 0:
            items = dict(layout.global_categorical).get(features.ITEM_ID)
            if items is None:
                raise ValueError("history_dim > 0 needs item_id among the global features")
            self.history_emb = tf.Variable(rng.normal(0.0, 0.05, (items, model_cfg.history_dim)),
                                           dtype=dtype, name="meta_history_emb")
        self.genre_params: Dict[str, tf.Variable] = {}
        self.genre_names: List[str] = []  # θ of the user × genre block, in layer order
        self.genre_user_emb = None  # the (user, genre) rows (ModelConfig.genre_row_buckets)
        if "user_x_genre" in model_cfg.meta_blocks:
            if not layout.global_multi_hot:
                raise ValueError("the user_x_genre block needs a genre multi-hot global feature")
            width = layout.meta_dim + layout.global_multi_hot[0][1]
            if model_cfg.genre_row_buckets > 0:
                if model_cfg.user_id_embedding_dim == 0:
                    raise ValueError("genre_row_buckets > 0 needs user_id_embedding_dim > 0 "
                                     "(the (user, genre) rows have its width)")
                self.genre_user_emb = tf.Variable(
                    tf.zeros([model_cfg.genre_row_buckets, model_cfg.user_id_embedding_dim], dtype),
                    name="meta_genre_user_emb")
                width += model_cfg.user_id_embedding_dim
            self.genre_names = meta_param_names(len(model_cfg.genre_hidden))
            for i, h in enumerate(tuple(model_cfg.genre_hidden) + (model_cfg.embedding_dim,)):
                self.genre_params[f"w{i}"] = tf.Variable(_glorot(rng, width, h), dtype=dtype,
                                                         name=f"genre_w{i}")
                self.genre_params[f"b{i}"] = tf.Variable(np.zeros(h), dtype=dtype,
                                                         name=f"genre_b{i}")
                width = h
        self.global_names = sorted(glob0)
        self.global_params = {k: tf.Variable(v, dtype=dtype, name=f"global_{k}")
                              for k, v in glob0.items()}
        self.inner_lrs = {}
        if maml_cfg.learn_inner_lr:
            self.inner_lrs = {k: tf.Variable(tf.fill(v.shape, tf.constant(maml_cfg.inner_lr, dtype)),
                                             name=f"inner_lr_{k}")
                              for k, v in meta0.items()}

    def outer_variables(self) -> List[tf.Variable]:
        """Variables trained by the outer loop, in a fixed order."""
        out = [self.meta_params[k] for k in self.meta_names]
        out += [] if self.user_emb is None else [self.user_emb]
        out += [] if self.history_emb is None else [self.history_emb]
        out += [self.genre_params[k] for k in self.genre_names]
        out += [] if self.genre_user_emb is None else [self.genre_user_emb]
        trained = [k for k in self.global_names
                   if self.model_cfg.wide_trainable or not k.startswith("wide_")]
        out += [self.global_params[k] for k in trained]
        out += [self.inner_lrs[k] for k in self.meta_names if k in self.inner_lrs]
        out += [] if self.row_log_precision is None else [self.row_log_precision]
        return out

    def l2_variables(self) -> List[tf.Variable]:
        """Variables under ``MamlConfig.outer_l2``: the outer-trained global weights and tables
        (keys not starting with ``b``, as the baselines) and the user-id table."""
        trained = {id(v) for v in self.outer_variables()}
        out = [self.global_params[k] for k in self.global_names if not k.startswith("b")]
        out += [] if self.user_emb is None else [self.user_emb]
        out += [] if self.genre_user_emb is None else [self.genre_user_emb]
        return [v for v in out if id(v) in trained]

    def inner_lr_tensors(self) -> Dict[str, tf.Tensor]:
        """α per θ_meta entry: learned (Meta-SGD) or the fixed ``inner_lr`` scalar."""
        out = {k: tf.constant(self.maml_cfg.inner_lr, self.dtype) for k in self.meta_names}
        if self.inner_lrs:
            out = {k: tf.convert_to_tensor(v) for k, v in self.inner_lrs.items()}
        if self.user_emb is not None:
            lr = self.maml_cfg.user_row_lr
            out[USER_ROW] = tf.constant(self.maml_cfg.inner_lr if lr is None else lr, self.dtype)
        return out

    def user_rows(self, user_hash: tf.Tensor) -> tf.Tensor:
        """User-id embedding rows ``[..., d]`` of hashed ids ``[...]`` (needs ``user_id_embedding_dim``)."""
        return table_rows(self.user_emb, tf.cast(user_hash, tf.int64))

    def meta_params_for(self, feats: Features) -> Params:
        """θ_meta for un-adapted forward passes on ``feats`` ``[...]``: the shared weights plus,
        with a user-id embedding, each sample's row (``user_row [..., d]``)."""
        params = dict(self.meta_params)
        if self.user_emb is not None:
            if USER_HASH not in feats:
                raise KeyError(f"the meta block has a user-id embedding; features need {USER_HASH!r}")
            params[USER_ROW] = self.user_rows(feats[USER_HASH])
        return params

    def history_vector(self, support: Features) -> Optional[tf.Tensor]:
        """:func:`history_summary` of support sets ``[tasks, S, ...]`` -> ``[tasks, 2 (C_h + G)]``
        (None without a history encoder)."""
        if self.history_emb is None:
            return None
        return history_summary(support, self.history_emb, self.layout, self.model_cfg.history_labels)

    def genre_x(self, feats: Features) -> tf.Tensor:
        """Input of the user×genre block ``[..., D + G]``: the meta input and the one-hot of the
        row's primary genre (the lowest genre bucket it carries)."""
        name, buckets = self.layout.global_multi_hot[0]
        return tf.concat([meta_input(feats, self.layout, self.dtype),
                          tf.one_hot(primary_genre(feats[name]), buckets, dtype=self.dtype)], -1)

    def genre_row_index(self, user_hash: tf.Tensor, genre: tf.Tensor) -> tf.Tensor:
        """Row of the pair (user, genre) in the (user, genre) table, ``[...]`` int64:
        ``((k · 2654435761) mod (2³¹ − 1)) mod B`` with ``k = user_hash · G + g`` (G genre
        buckets, B = ``genre_row_buckets``). Multiplying by a constant modulo a prime maps the
        pair keys one-to-one and scatters them, so the last step spreads pairs over the rows
        whatever B is (a plain ``k mod B`` with B and G powers of two keeps only the low bits
        of the user hash: users would share rows far more often than B allows)."""
        genres = self.layout.global_multi_hot[0][1]
        key = tf.cast(user_hash, tf.int64) * genres + tf.cast(genre, tf.int64)
        mixed = tf.math.floormod(key * _GENRE_ROW_MULTIPLIER, _GENRE_ROW_PRIME)
        return tf.math.floormod(mixed, self.model_cfg.genre_row_buckets)

    def genre_rows(self, user_hash: tf.Tensor, genre: tf.Tensor) -> tf.Tensor:
        """The (user, genre) rows ``[..., d]`` of hashed user ids and genre buckets ``[...]``."""
        return table_rows(self.genre_user_emb, self.genre_row_index(user_hash, genre))

    def genre_params_for(self, feats: Features, rows: Optional[tf.Tensor] = None) -> Params:
        """θ_g for un-adapted forward passes on ``feats`` ``[...]``: the shared weights plus, with
        a (user, genre) table, each sample's row (``rows [..., d]`` or, when None, the rows of
        ``feats["user_hash"]`` and the sample's primary genre)."""
        params = dict(self.genre_params)
        if self.genre_user_emb is not None:
            if rows is None:
                if USER_HASH not in feats:
                    raise KeyError(f"the genre block has (user, genre) rows; features need "
                                   f"{USER_HASH!r} (or pass rows, zeros for a cold start)")
                name = self.layout.global_multi_hot[0][0]
                rows = self.genre_rows(feats[USER_HASH], primary_genre(feats[name]))
            params[USER_ROW] = rows
        return params

    def genre_embedding(self, feats: Features, rows: Optional[tf.Tensor] = None
                        ) -> Optional[tf.Tensor]:
        """Un-adapted user×genre embeddings ``[..., E]``, the genre slot of an entity without
        adaptation (None: single block): f_g(x_g; θ_g), or zeros with ``genre_combine``
        ``"residual"`` (the slot holds the adaptation's change only); ``rows``: see
        :meth:`genre_params_for`."""
        if not self.genre_params:
            return None
        if self.model_cfg.genre_combine == "residual":  # no forward pass: the slot is 0
            genres = feats[self.layout.global_multi_hot[0][0]]                  # [..., G]
            return tf.zeros(tf.concat([tf.shape(genres)[:-1], [self.model_cfg.embedding_dim]], 0),
                            self.dtype)
        return meta_forward(self.genre_params_for(feats, rows), self.genre_x(feats),
                            self.model_cfg.activation)

    def meta_x(self, feats: Features, history: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Dense meta input ``[..., D (+ 2 (C_h + G))]``.

        Args:
            feats: encoded features ``[...]`` (``[tasks, n]`` or ``[users]``).
            history: with a history encoder, the task's support summary ``[tasks, H]``
                (broadcast over the n samples of ``[tasks, n]`` features); None gives zeros
                (cold start).
        """
        x = meta_input(feats, self.layout, self.dtype)
        if self.history_emb is None:
            return x
        width = history_width(self.layout, self.model_cfg)
        if history is None:
            return tf.concat([x, tf.zeros(tf.concat([tf.shape(x)[:-1], [width]], 0), x.dtype)], -1)
        h = tf.cast(history, x.dtype)
        if x.shape.rank == h.shape.rank + 1:
            h = tf.broadcast_to(h[:, None, :], tf.concat([tf.shape(x)[:-1], [width]], 0))
        return tf.concat([x, h], axis=-1)

    def meta_embedding(self, feats: Features) -> tf.Tensor:
        """Un-adapted meta embeddings f(x_meta; θ_meta), ``[..., E]``."""
        return meta_forward(self.meta_params_for(feats), self.meta_x(feats),
                            self.model_cfg.activation)

    def logits(self, feats: Features, meta_emb: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Logits ``[...]``; per-sample un-adapted meta embeddings when ``meta_emb`` is None."""
        if meta_emb is None:
            meta_emb = self.meta_embedding(feats)
        return global_forward(self.global_params, meta_emb, feats, self.layout, self.model_cfg)
