"""The LiMAML network: a meta block f(x_meta; θ_meta) and a global block g(e, x; θ_global).

Parameters are plain tensors held in dicts so that the MAML inner loop can run the same
functions on per-task copies of θ_meta (tensors with a leading task dimension) without ever
assigning to a ``tf.Variable``.

Meta block (MLP, ``L = len(meta_hidden)`` hidden layers)::

    h_0 = meta_x                                   [tasks, n, D]
    h_{l+1} = act(einsum('tnd,tdh->tnh', h_l, W_l) + b_l[:, None])
    e = einsum('tnd,tdh->tnh', h_L, W_L) + b_L     [tasks, n, E]

Global block::

    z = [e, emb_f(x_f) for global categorical f, multi-hot, numeric]   [..., F]
    (optional DCN-v2 cross layers: z_{k+1} = z_0 * (z_k W_k + b_k) + z_k)
    logit = MLP(z)                                                     [...]
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf

from limaml.config import MamlConfig, ModelConfig
from trainer.layout import USER_HASH, FeatureLayout

Params = Dict[str, tf.Tensor]
Features = Mapping[str, tf.Tensor]


def _act(name: str):
    return {"relu": tf.nn.relu, "tanh": tf.math.tanh}[name]


def _dot(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """``x [..., f] @ w [f, ...]`` by tensordot.

    Note: ``tf.einsum("...f,fh->...h")`` with a rank-2 ``x`` returns wrong values on CPU with
    oneDNN enabled in TF 2.16 (checked here: errors of order 50 for a [50, 105] x [105, 64]
    product), so contractions with shared weights use tensordot.
    """
    return tf.tensordot(x, w, axes=1)


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


def meta_forward(meta_params: Mapping[str, tf.Tensor], meta_x: tf.Tensor,
                 activation: str = "relu") -> tf.Tensor:
    """Meta block forward pass, batched over tasks.

    Args:
        meta_params: ``w{l}`` / ``b{l}`` tensors. With a leading task dim (``W [tasks, d_in, h]``,
            ``b [tasks, h]``) meta_x must be ``[tasks, n, d_in]``; without it (``W [d_in, h]``)
            meta_x may have any leading dims.
        meta_x: dense meta input ``[tasks, n, D]`` (or ``[..., D]`` for shared params).
        activation: hidden activation.

    Returns:
        Meta embeddings ``[tasks, n, E]`` (or ``[..., E]``).
    """
    num_layers = len(meta_params) // 2
    act = _act(activation)
    h = meta_x
    for i in range(num_layers):
        w, b = meta_params[f"w{i}"], meta_params[f"b{i}"]
        if w.shape.rank == 3:
            h = tf.einsum("tnd,tdh->tnh", h, w) + b[:, None, :]
        else:
            h = _dot(h, w) + b
        if i < num_layers - 1:
            h = act(h)
    return h


def global_forward(global_params: Mapping[str, tf.Tensor], meta_emb: Optional[tf.Tensor],
                   feats: Features, layout: FeatureLayout, model_cfg: ModelConfig,
                   extra: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Global block forward pass.

    Args:
        global_params: θ_global (``emb_<f>``, optional ``cross_w{k}``/``cross_b{k}``, ``w{l}``/``b{l}``,
            ``w_out``/``b_out``).
        meta_emb: meta embeddings ``[..., E]`` or None (global DNN baseline).
        feats: encoded features with leading dims ``[...]``.
        layout: the feature layout.
        model_cfg: the model config.
        extra: optional extra dense input ``[..., X]`` (wide&deep: user-id embedding).

    Returns:
        Logits ``[...]``.
    """
    dtype = global_params["w_out"].dtype
    parts = [] if meta_emb is None else [tf.cast(meta_emb, dtype)]
    if extra is not None:
        parts.append(extra)
    for name, _ in layout.global_categorical:
        parts.append(tf.gather(global_params[f"emb_{name}"], tf.cast(feats[name], tf.int64)))
    for name, _ in layout.global_multi_hot:
        parts.append(tf.cast(feats[name], dtype))
    for name in layout.global_numeric:
        parts.append(tf.cast(feats[name], dtype)[..., None])
    z = tf.concat(parts, axis=-1)
    if model_cfg.use_cross:
        z0 = z
        for k in range(model_cfg.cross_layers):
            z = z0 * (_dot(z, global_params[f"cross_w{k}"])
                      + global_params[f"cross_b{k}"]) + z
    act = _act(model_cfg.activation)
    for i in range(len(model_cfg.global_hidden)):
        z = act(_dot(z, global_params[f"w{i}"]) + global_params[f"b{i}"])
    logit = _dot(z, global_params["w_out"]) + global_params["b_out"]
    return logit[..., 0]


def _glorot(rng: np.random.RandomState, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def init_global_params(rng: np.random.RandomState, layout: FeatureLayout, model_cfg: ModelConfig,
                       meta_dim: int, extra_dim: int = 0) -> Dict[str, np.ndarray]:
    """Initial values of θ_global (numpy), for a meta embedding of width ``meta_dim``."""
    out: Dict[str, np.ndarray] = {}
    c = model_cfg.categorical_embedding_dim
    for name, vocab in layout.global_categorical:
        out[f"emb_{name}"] = rng.normal(0.0, 0.05, size=(vocab, c))
    width = (meta_dim + extra_dim + c * len(layout.global_categorical)
             + sum(b for _, b in layout.global_multi_hot) + len(layout.global_numeric))
    if model_cfg.use_cross:
        for k in range(model_cfg.cross_layers):
            out[f"cross_w{k}"] = rng.normal(0.0, 0.01, size=(width, width))
            out[f"cross_b{k}"] = np.zeros(width)
    for i, h in enumerate(model_cfg.global_hidden):
        out[f"w{i}"] = _glorot(rng, width, h)
        out[f"b{i}"] = np.zeros(h)
        width = h
    out["w_out"] = _glorot(rng, width, 1)
    out["b_out"] = np.zeros(1)
    return out


def init_meta_params(rng: np.random.RandomState, layout: FeatureLayout,
                     model_cfg: ModelConfig) -> Dict[str, np.ndarray]:
    """Initial values of θ_meta (numpy)."""
    out: Dict[str, np.ndarray] = {}
    width = layout.meta_dim
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
        glob0 = init_global_params(rng, layout, model_cfg, model_cfg.embedding_dim)
        self.meta_params = {k: tf.Variable(v, dtype=dtype, name=f"meta_{k}")
                            for k, v in meta0.items()}
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
        out += [self.global_params[k] for k in self.global_names]
        out += [self.inner_lrs[k] for k in self.meta_names if k in self.inner_lrs]
        return out

    def inner_lr_tensors(self) -> Dict[str, tf.Tensor]:
        """α per θ_meta entry: learned (Meta-SGD) or the fixed ``inner_lr`` scalar."""
        if self.inner_lrs:
            return {k: tf.convert_to_tensor(v) for k, v in self.inner_lrs.items()}
        a = tf.constant(self.maml_cfg.inner_lr, self.dtype)
        return {k: a for k in self.meta_names}

    def meta_x(self, feats: Features) -> tf.Tensor:
        """Dense meta input ``[..., D]``."""
        return meta_input(feats, self.layout, self.dtype)

    def meta_embedding(self, feats: Features) -> tf.Tensor:
        """Un-adapted meta embeddings f(x_meta; θ_meta), ``[..., E]``."""
        return meta_forward(self.meta_params, self.meta_x(feats), self.model_cfg.activation)

    def logits(self, feats: Features, meta_emb: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Logits ``[...]``; per-sample un-adapted meta embeddings when ``meta_emb`` is None."""
        if meta_emb is None:
            meta_emb = self.meta_embedding(feats)
        return global_forward(self.global_params, meta_emb, feats, self.layout, self.model_cfg)
