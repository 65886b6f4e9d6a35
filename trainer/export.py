"""Model export: ``global_block/`` (TF Serving SavedModel) and ``meta_block/`` (what MEG needs).

``global_block/`` signatures:

* ``serving_default(examples: string[N])`` -> ``{"probabilities": float32[N]}``: parses serialized
  ``tf.Example``s holding raw features plus ``meta_embedding`` (float list [W]), applies the
  Transform graph (``TFTransformOutput.transform_features_layer()``) and the global block.

``W`` (:func:`meta_embedding_width`) is ``E`` for a single-block model and ``2E`` for a model
with the user × genre block: the concatenation ``[e_user, e_user×genre]`` where
``e_user×genre`` is the embedding of the candidate's primary genre (``"<user>#<g>"`` rows of the
stores, :mod:`embeddings.entity_keys`). Below, ``[N, E]`` in the signatures reads ``[N, W]``.
* ``predict_dense(<encoded global features>, meta_embedding: float32[N, E])`` -> same output, for
  callers that already hold encoded tensors.
* ``predict_raw(<raw features>, meta_embedding: float32[N, E])`` -> same output: one dense ``[N]``
  tensor per raw serving feature the scorer needs (a row per candidate, dtypes of the raw
  feature spec; :func:`needed_raw_names`: for a LiMAML global block the item's columns, not the
  user's, which only the meta block reads), the Transform graph applied inside, with the scores
  ``serving_default`` gives after parsing. The ranker's low-latency path: a ``PredictRequest``
  built from numpy columns, no ``tf.Example`` per candidate (:data:`RAW_SIGNATURE`).

Beside them, ``assets.extra/tf_serving_warmup_requests`` (:mod:`trainer.serving_warmup`):
``predict_raw`` requests of blank rows that TF Serving replays when it loads the version.

``meta_block/``:

* a SavedModel whose ``generate`` / ``generate_latest`` / ``generate_mean`` / ``generate_max``
  tf.functions take ``(support: {feature: [U, S, ...], "label": [U, S]}, mask: [U, S])`` encoded
  tensors and return ``[U, E]`` meta embeddings (fine-tuned per user, cold users un-adapted),
  and ``cold_start(meta_features: {feature: [U]})`` -> ``[U, E]``;
* ``checkpoint/``: a ``tf.train.Checkpoint(model=LimamlModel)`` (rebuild with
  :func:`load_meta_block`);
* ``meta_block.json``: config (LimamlConfig JSON), layout, vocabulary sizes, adaptation
  hyper-parameters, embedding dim, model version.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, Mapping, Optional, Set, Tuple

import tensorflow as tf

from components.common.model_layout import WARMUP_REQUESTS_FILE
from limaml.config import LimamlConfig
from schema import features
from trainer import finetune
from trainer.layout import MASK, USER_HASH, FeatureLayout
from trainer.model import LimamlModel, global_forward
from trainer.serving_warmup import write_warmup

META_BLOCK_JSON = "meta_block.json"
RAW_SIGNATURE = "predict_raw"
# Raw columns a serving request does not need to carry.
_NOT_SERVED = (features.LABEL, features.RATING, features.ORACLE_PROB, features.TIMESTAMP)


def encoded_spec(name: str, layout_buckets: Mapping[str, int], leading=(None,)) -> tf.TensorSpec:
    """TensorSpec of one encoded feature with the given leading dims."""
    if name == USER_HASH:
        return tf.TensorSpec(list(leading), tf.int64, name=name)
    enc = features.encoding(name)
    if enc.kind == "categorical":
        return tf.TensorSpec(list(leading), tf.int64, name=name)
    if enc.kind == "multi_hot":
        return tf.TensorSpec(list(leading) + [enc.buckets], tf.float32, name=name)
    return tf.TensorSpec(list(leading), tf.float32, name=name)


class GlobalBlockServing(tf.Module):
    """Serving module of the global block (LiMAML) or a baseline (meta embedding ignored)."""

    def __init__(self, scorer, params: tf.Module, tft_output, input_names: Tuple[str, ...],
                 embedding_dim: int, require_meta_embedding: bool, needs_user_id: bool):
        super().__init__(name="global_block")
        self.params = params
        self.tft_layer = TransformGraph(tft_output.transform_savedmodel_dir)
        self._scorer = scorer
        drop = set(_NOT_SERVED) | (set() if needs_user_id else {features.USER_ID})
        spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k not in drop}
        spec[features.META_EMBEDDING] = (
            tf.io.FixedLenFeature([embedding_dim], tf.float32) if require_meta_embedding else
            tf.io.FixedLenFeature([embedding_dim], tf.float32, default_value=[0.0] * embedding_dim))
        self._spec = spec
        self._input_names = input_names
        dense_specs = {n: encoded_spec(n, {}) for n in input_names}
        dense_specs[features.META_EMBEDDING] = tf.TensorSpec([None, embedding_dim], tf.float32,
                                                             name=features.META_EMBEDDING)
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
        self.predict_dense = tf.function(self._predict_dense, input_signature=[dense_specs],
                                         autograph=False)
        needed = needed_raw_names(self.tft_layer, raw_input_names(spec), input_names)
        self._raw_names = needed if needed is not None else raw_input_names(spec)
        # What predict_raw feeds the Transform: those columns when they suffice, else every
        # parsed column (the absent ones as parse_example gives them).
        self._fed_names = needed if needed is not None else tuple(
            k for k in spec if k != features.META_EMBEDDING)

    def _raw_to_parsed(self, raw: Mapping[str, tf.Tensor]) -> Dict[str, Any]:
        """Dense ``[N]`` raw columns -> what ``parse_example`` gives for ``self._fed_names``
        (where those are the needed raw inputs, the Transform computes only what the scorer
        reads)."""
        n = tf.shape(raw[features.META_EMBEDDING])[0]
        parsed: Dict[str, Any] = {}
        for name in self._fed_names:
            feat = self._spec[name]
            col = raw.get(name)
            if isinstance(feat, tf.io.VarLenFeature):
                if col is None:  # absent from every example: an empty [N, 0] sparse tensor
                    parsed[name] = tf.SparseTensor(tf.zeros([0, 2], tf.int64),
                                                   tf.zeros([0], feat.dtype),
                                                   tf.stack([tf.cast(n, tf.int64), 0]))
                else:  # one value per row, empty strings and zeros kept
                    rows = tf.range(tf.cast(tf.shape(col)[0], tf.int64))
                    parsed[name] = tf.SparseTensor(
                        tf.stack([rows, tf.zeros_like(rows)], axis=1), col,
                        tf.stack([tf.cast(tf.shape(col)[0], tf.int64), 1]))
            elif col is None:
                default = feat.default_value if feat.default_value is not None else 0
                parsed[name] = tf.fill(tf.concat([[n], feat.shape], 0),
                                       tf.constant(default, feat.dtype))
            else:
                parsed[name] = col
        return parsed

    def _predict_raw(self, raw):
        raw = dict(raw)
        emb = raw[features.META_EMBEDDING]
        transformed = self.tft_layer(self._raw_to_parsed(raw))
        return {"probabilities": tf.sigmoid(self._scorer(transformed, emb))}

    def _serve(self, examples):
        parsed = tf.io.parse_example(examples, self._spec)
        emb = parsed.pop(features.META_EMBEDDING)
        transformed = self.tft_layer(parsed)
        return {"probabilities": tf.sigmoid(self._scorer(transformed, emb))}

    def _predict_dense(self, inputs):
        inputs = dict(inputs)
        emb = inputs.pop(features.META_EMBEDDING)
        return {"probabilities": tf.sigmoid(self._scorer(inputs, emb))}

    def save(self, path: str) -> None:
        # Signatures need flat keyword inputs: wrap predict_dense.
        names = list(self._input_names) + [features.META_EMBEDDING]
        specs = [encoded_spec(n, {}) for n in self._input_names] + [
            tf.TensorSpec([None, self._spec[features.META_EMBEDDING].shape[0]], tf.float32,
                          name=features.META_EMBEDDING)]

        def flat(*args):
            return self.predict_dense(dict(zip(names, args)))
        flat_fn = tf.function(flat, input_signature=specs, autograph=False)
        emb_spec = specs[-1]
        raw_names = list(self._raw_names) + [features.META_EMBEDDING]
        raw_specs = [tf.TensorSpec([None], self._spec[n].dtype, name=n)
                     for n in self._raw_names] + [emb_spec]

        def flat_raw(*args):
            return self._predict_raw(dict(zip(raw_names, args)))
        raw_fn = tf.function(flat_raw, input_signature=raw_specs, autograph=False)
        tf.saved_model.save(self, path, signatures={
            "serving_default": self.serve.get_concrete_function(),
            "predict_dense": flat_fn.get_concrete_function(),
            RAW_SIGNATURE: raw_fn.get_concrete_function(),
        })
        # TF Serving (and the stand-in) replay these at load, on every replica
        write_warmup(path, RAW_SIGNATURE, dict(zip(raw_names, raw_specs)))


class TransformGraph(tf.Module):
    """The Transform graph as a plain ``tf.Module``: ``self(features)`` -> transformed features.

    The same call as ``TFTransformOutput.transform_features_layer()`` (TFT's
    ``SavedModelLoader.apply_transform_model``), whose tables and assets it tracks the same way
    (the loader's attributes), without the Keras model around it: saved inside a SavedModel, the
    Keras layer had Keras's legacy serializer trace it again with autograph, ~3 s of each export.
    """

    def __init__(self, transform_savedmodel_dir: str):
        super().__init__(name="transform_graph")
        from tensorflow_transform.saved import saved_transform_io_v2

        self._loader = saved_transform_io_v2.SavedModelLoader(transform_savedmodel_dir)
        self.loader_state = self._loader.__dict__  # tracked: the graph's resources and assets

    def __call__(self, features: Mapping[str, Any]) -> Dict[str, Any]:
        return self._loader.apply_transform_model(features)

    def outputs_from(self, raw_names: Iterable[str]) -> Optional[Set[str]]:
        """The outputs a call fed only ``raw_names`` returns, without running the graph.

        TFT's loader decides that from the graph's dependencies on each call (its private
        ``_get_feeds`` / ``_get_fetches_keys``); this asks it directly. None where the loader
        has no such pruning (a TF1 graph loaded in compat mode, another TFT): call it then.
        """
        loader = self._loader
        try:
            if loader.load_v2_in_compat:
                return None
            unfed = loader._get_unfed_input_keys(list(raw_names))  # pylint: disable=protected-access
            return set(loader._get_fetches_keys(loader._get_feeds(unfed)))  # pylint: disable=protected-access
        except AttributeError:
            return None


def raw_input_names(spec: Mapping[str, Any]) -> Tuple[str, ...]:
    """Raw inputs of ``predict_raw``: the canonical serving columns of the parsing spec.

    Derived columns the examples may carry (cohort, history size) are not inputs: the
    signature gives the Transform what ``parse_example`` gives when they are absent.
    """
    return tuple(k for k in spec if k in features.CANONICAL_COLUMNS
                 and k not in _NOT_SERVED and k != features.META_EMBEDDING)


def needed_raw_names(transform: "TransformGraph", raw_names: Tuple[str, ...],
                     wanted: Iterable[str]) -> Optional[Tuple[str, ...]]:
    """The raw columns ``predict_raw`` takes: those the Transform needs for ``wanted``.

    Starting from every raw serving column, each one (in order) is left out when the Transform,
    fed the rest, still produces every ``wanted`` output (asked of the Transform graph, not by
    running it: :meth:`TransformGraph.outputs_from`). A LiMAML global block reads item features
    only, so the user's columns (its meta features, which only the meta block reads) are not
    sent per candidate and not transformed per request.

    Args:
        transform: the Transform graph.
        raw_names: candidate raw columns, in signature order.
        wanted: encoded features the scorer reads.

    Returns:
        The kept raw columns, in ``raw_names`` order; None where the Transform cannot say, or
        needs more than the raw columns (e.g. a derived column's default) for ``wanted``.
    """
    wanted = set(wanted)
    full = transform.outputs_from(raw_names)
    if full is None or not wanted <= full:
        return None
    keep = list(raw_names)
    for name in raw_names:
        trial = [k for k in keep if k != name]
        outputs = transform.outputs_from(trial)
        if outputs is not None and wanted <= outputs:
            keep = trial
    return tuple(keep)


def meta_embedding_width(model_cfg) -> int:
    """``W``, width of the global block's ``meta_embedding`` input: ``E × len(meta_blocks)``
    (``E`` single-block, ``2E`` with the user × genre block)."""
    return int(model_cfg.embedding_dim) * len(tuple(model_cfg.meta_blocks))


def export_global_block(path: str, model: LimamlModel, tft_output) -> None:
    """Writes the LiMAML global block SavedModel to ``path`` (``meta_embedding`` ``[N, W]``)."""
    holder = tf.Module()
    holder.global_params = model.global_params
    layout, cfg = model.layout, model.model_cfg

    def scorer(feats, emb):
        return global_forward(holder.global_params, emb, feats, layout, cfg)
    GlobalBlockServing(scorer, holder, tft_output, layout.global_feature_names,
                       meta_embedding_width(cfg), require_meta_embedding=True,
                       needs_user_id=False).save(path)


def export_baseline(path: str, model, tft_output, embedding_dim: int) -> None:
    """Writes a baseline with the same serving contract (``meta_embedding`` optional, ignored)."""
    names = tuple(model.layout.global_feature_names)
    needs_user = model.kind in ("wide_deep", "linear_user_id")
    if needs_user:
        names = names + (USER_HASH,)

    def scorer(feats, emb):
        del emb
        return model.logits(feats)
    GlobalBlockServing(scorer, model, tft_output, names, embedding_dim,
                       require_meta_embedding=False, needs_user_id=needs_user).save(path)


class MetaBlockExport(tf.Module):
    """SavedModel of the meta block with batched fine-tuning functions."""

    def __init__(self, model: LimamlModel, aggregation: str):
        super().__init__(name="meta_block")
        self.model = model
        lay = model.layout
        support_names = tuple(sorted(set(lay.meta_feature_names) | set(lay.global_feature_names)
                                     | {USER_HASH}))
        support_spec = {n: encoded_spec(n, {}, (None, None)) for n in support_names}
        support_spec[features.LABEL] = tf.TensorSpec([None, None], tf.float32, name="label")
        mask_spec = tf.TensorSpec([None, None], tf.float32, name=MASK)
        steps = model.maml_cfg.adaptation_steps
        for agg in ("latest", "mean", "max"):
            fn = tf.function(
                lambda support, mask, agg=agg: finetune.generate_meta_embeddings_fn(
                    model, support, mask, agg, steps),
                input_signature=[support_spec, mask_spec], autograph=False)
            setattr(self, f"generate_{agg}", fn)
        self.generate = getattr(self, f"generate_{aggregation}")
        meta_spec = {n: encoded_spec(n, {}) for n in lay.meta_feature_names}
        self.cold_start = tf.function(
            lambda meta_features: finetune.cold_start_embedding(model, meta_features),
            input_signature=[meta_spec], autograph=False)


def export_meta_block(path: str, model: LimamlModel, cfg: LimamlConfig,
                      model_version: Optional[str] = None) -> None:
    """Writes ``meta_block/``: SavedModel with ``generate``, checkpoint and JSON config."""
    tf.io.gfile.makedirs(path)
    module = MetaBlockExport(model, cfg.embeddings.aggregation)
    tf.saved_model.save(module, path)
    tf.train.Checkpoint(model=model).write(os.path.join(path, "checkpoint", "model"))
    info: Dict[str, Any] = {
        "limaml_config": json.loads(cfg.to_json()),
        "layout": model.layout.to_dict(),
        "vocab_sizes": model.layout.vocab_sizes,
        "embedding_dim": model.model_cfg.embedding_dim,
        "meta_blocks": list(model.model_cfg.meta_blocks),
        "meta_embedding_width": meta_embedding_width(model.model_cfg),
        "adaptation": {"inner_lr": model.maml_cfg.inner_lr,
                       "learn_inner_lr": model.maml_cfg.learn_inner_lr,
                       "adaptation_steps": model.maml_cfg.adaptation_steps,
                       "aggregation": cfg.embeddings.aggregation,
                       "max_recent": cfg.embeddings.max_recent},
        "meta_features": list(model.layout.meta_feature_names),
        "model_version": model_version,
        "functions": ["generate", "generate_latest", "generate_mean", "generate_max",
                      "cold_start"],
    }
    with tf.io.gfile.GFile(os.path.join(path, META_BLOCK_JSON), "w") as f:
        f.write(json.dumps(info, indent=2, sort_keys=True))


def load_meta_block(path: str) -> Tuple[LimamlModel, LimamlConfig, Dict[str, Any]]:
    """Rebuilds the trained :class:`LimamlModel` from ``meta_block/`` (for MEG in Python/Beam)."""
    with tf.io.gfile.GFile(os.path.join(path, META_BLOCK_JSON)) as f:
        info = json.loads(f.read())
    cfg = LimamlConfig.from_json(json.dumps(info["limaml_config"]))
    layout = FeatureLayout.from_dict(info["layout"])
    model = LimamlModel(layout, cfg.model, cfg.maml, seed=cfg.train.seed)
    tf.train.Checkpoint(model=model).read(
        os.path.join(path, "checkpoint", "model")).assert_existing_objects_matched()
    return model, cfg, info


def reexport_global_block(model_dir: str, out_dir: str) -> None:
    """Re-exports a served LiMAML model folder with the current signatures (e.g. ``predict_raw``).

    Rebuilds the trained model from ``<model_dir>/assets.extra/meta_block/`` (checkpoint and
    the Transform graph copy), writes the global block to ``out_dir`` and copies
    ``assets.extra/`` beside it, so ``out_dir`` is a drop-in version folder for TF Serving.

    Args:
        model_dir: a pushed version folder (``<serving_base>/<version>/``).
        out_dir: where to write the new version folder (must not exist).
    """
    import shutil

    import tensorflow_transform as tft

    meta_dir = os.path.join(model_dir, "assets.extra", "meta_block")
    model, _, _ = load_meta_block(meta_dir)
    tft_output = tft.TFTransformOutput(os.path.join(meta_dir, "transform_graph"))
    export_global_block(out_dir, model, tft_output)
    # the old version's extras (meta block, Transform copy), not its warm-up requests: the
    # export just wrote the ones for its own signatures
    shutil.copytree(os.path.join(model_dir, "assets.extra"), os.path.join(out_dir, "assets.extra"),
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(os.path.basename(WARMUP_REQUESTS_FILE)))
