"""The global block g(e, x; θ_global): scores user × item from the meta embedding and the rest.

Global block::

    z = [e, emb_f(x_f) for global categorical f, multi-hot, numeric]   [..., F]
    (optional DCN-v2 cross layers: z_{k+1} = z_0 * (z_k W_k + b_k) + z_k)
    logit = MLP(z) (+ wide part over the global features) (+ <P e, v_item>)   [...]

Parameters are plain tensors in a dict (θ_global), shared by LiMAML (:mod:`trainer.model`) and
the DNN baselines (:mod:`trainer.baselines`).

References:
    DCN-v2: Wang et al., Improved Deep & Cross Network (arXiv:2008.13535) §3.2, eq. 1 (cross
    layers). Wide part: Cheng et al., Wide & Deep Learning (arXiv:1606.07792) §3.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from limaml.config import ModelConfig
from schema import features
from trainer.layout import FeatureLayout
from trainer.nn_ops import _act, _dot, _glorot

DOT_PROJ = "dot_proj"
Features = Mapping[str, tf.Tensor]


def global_forward(global_params: Mapping[str, tf.Tensor], meta_emb: Optional[tf.Tensor],
                   feats: Features, layout: FeatureLayout, model_cfg: ModelConfig,
                   extra: Optional[tf.Tensor] = None, meta_apart: bool = False) -> tf.Tensor:
    """Global block forward pass.

    Args:
        global_params: θ_global (``emb_<f>``, optional ``cross_w{k}``/``cross_b{k}``, ``w{l}``/``b{l}``,
            ``w_out``/``b_out``).
        meta_emb: meta embeddings ``[..., E]`` or None (global DNN baseline); with several
            meta blocks ``[..., B·E]``, summed to ``[..., E]`` when ``model_cfg.genre_combine``
            is ``"sum"`` or ``"residual"``.
        feats: encoded features with leading dims ``[...]``.
        layout: the feature layout.
        model_cfg: the model config.
        extra: optional extra dense input ``[..., X]`` (wide&deep: user-id embedding).
        meta_apart: compute the first layer as ``e W[:E] + x W[E:]`` instead of ``[e | x] W``
            (the same layer): backprop to the meta embedding e then costs ``[N, h] x [h, E]``
            instead of a gradient for every input column. For the inner loop, which
            differentiates only through e (MEG's kernel ~10% faster); a forward pass alone is
            faster concatenated (measured: 20% at 1,000 rows), so serving keeps the default.

    Returns:
        Logits ``[...]``.
    """
    dtype = global_params["w_out"].dtype
    if meta_emb is not None and model_cfg.genre_combine != "concat" and len(model_cfg.meta_blocks) > 1:
        # [e_user, e_user×genre] [..., 2E] -> e_user + e_user×genre [..., E]
        meta_emb = tf.add_n(tf.split(meta_emb, len(model_cfg.meta_blocks), axis=-1))
    parts = [] if meta_emb is None else [tf.cast(meta_emb, dtype)]
    if extra is not None:
        parts.append(extra)
    for name, _ in layout.global_categorical:
        parts.append(tf.gather(global_params[f"emb_{name}"], tf.cast(feats[name], tf.int64)))
    for name, _ in layout.global_multi_hot:
        parts.append(tf.cast(feats[name], dtype))
    for name in layout.global_numeric:
        parts.append(tf.cast(feats[name], dtype)[..., None])
    act = _act(model_cfg.activation)
    layers = [(f"w{i}", f"b{i}") for i in range(len(model_cfg.global_hidden))] + [("w_out", "b_out")]
    width = None if meta_emb is None else parts[0].shape[-1]
    if not meta_apart or model_cfg.use_cross or width is None or len(parts) < 2:
        z = tf.concat(parts, axis=-1)
        if model_cfg.use_cross:
            z0 = z
            for k in range(model_cfg.cross_layers):
                z = z0 * (_dot(z, global_params[f"cross_w{k}"])
                          + global_params[f"cross_b{k}"]) + z
        first = _dot(z, global_params[layers[0][0]])
    else:
        w = global_params[layers[0][0]]
        first = _dot(parts[0], w[:width]) + _dot(tf.concat(parts[1:], axis=-1), w[width:])
    z = first + global_params[layers[0][1]]
    for w_name, b_name in layers[1:]:
        z = _dot(act(z), global_params[w_name]) + global_params[b_name]
    logit = z[..., 0]
    if model_cfg.wide:
        logit += wide_logit(global_params, feats, layout)
    if meta_emb is not None and DOT_PROJ in global_params:
        logit += dot_interaction(global_params, meta_emb, feats, layout)
    return logit


def wide_logit(global_params: Mapping[str, tf.Tensor], feats: Features,
               layout: FeatureLayout) -> tf.Tensor:
    """Linear ("wide") part of the global block: ``Σ_f wide_f[x_f] + wide_m · multi_hot +
    wide_numeric · numeric`` over the global features, ``[...]``.

    It gives the deep model the linear reference's terms directly (per-item bias, genre and
    year weights), so the MLP only has to learn what a linear model cannot.
    """
    dtype = global_params["w_out"].dtype
    out = None
    for name, _ in layout.global_categorical:
        t = tf.gather(global_params[f"wide_{name}"], tf.cast(feats[name], tf.int64))
        out = t if out is None else out + t
    for name, _ in layout.global_multi_hot:
        out += _dot(tf.cast(feats[name], dtype), global_params[f"wide_{name}"])
    for i, name in enumerate(layout.global_numeric):
        out += tf.cast(feats[name], dtype) * global_params["wide_numeric"][i]
    return out


def dot_interaction(global_params: Mapping[str, tf.Tensor], meta_emb: tf.Tensor, feats: Features,
                    layout: FeatureLayout) -> tf.Tensor:
    """``<P e, v_item>``: the projected meta embedding against the item's representation.

    ``v_item = emb_item_id[item] + G · genres`` ``[..., C]``, ``P [E, C]``, ``G [genre buckets, C]``.

    Returns:
        ``[...]`` logit contributions.
    """
    dtype = global_params[DOT_PROJ].dtype
    v = tf.gather(global_params[f"emb_{features.ITEM_ID}"], tf.cast(feats[features.ITEM_ID], tf.int64))
    for name, _ in layout.global_multi_hot:
        v += _dot(tf.cast(feats[name], dtype), global_params[f"dot_{name}"])
    q = _dot(tf.cast(meta_emb, dtype), global_params[DOT_PROJ])
    return tf.reduce_sum(q * v, axis=-1)


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
    if model_cfg.wide:
        for name, vocab in layout.global_categorical:
            out[f"wide_{name}"] = np.zeros(vocab)
        for name, buckets in layout.global_multi_hot:
            out[f"wide_{name}"] = np.zeros(buckets)
        out["wide_numeric"] = np.zeros(len(layout.global_numeric))
    if meta_dim > 0 and model_cfg.interaction == "dot":
        if features.ITEM_ID not in dict(layout.global_categorical):
            raise ValueError("interaction 'dot' needs item_id among the global features")
        out[DOT_PROJ] = rng.normal(0.0, 1.0 / np.sqrt(meta_dim), size=(meta_dim, c))
        for name, buckets in layout.global_multi_hot:
            out[f"dot_{name}"] = rng.normal(0.0, 0.05, size=(buckets, c))
    return out
