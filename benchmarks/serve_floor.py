"""The serving benchmark's floor: the served SavedModel's own cost, called in process.

:func:`_floor_p50_ms` times the signature the ranker uses (``predict_raw`` on numpy columns built
by :func:`_raw_floor_inputs` when the model has it, else ``serving_default`` on serialized
examples), with the embedding the ranker would send (:func:`_floor_embeddings`: ``[E]`` for a
single-block model, ``[n, 2E]`` for a multi-block one). Serving overhead is measured against it.
:func:`_graph_floor_p50_ms` times ``predict_raw``'s graph alone, without the signature call's
Python argument binding (reported beside it, for a lower bound).

Used by :func:`benchmarks.serve_bench.run_serve_bench`.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from schema import features as F


def _p50_ms(call: Callable[[], Any], max_calls: int, max_seconds: float) -> float:
    """p50 in ms of ``call()["probabilities"].numpy()``, after 3 untimed calls, over at most
    ``max_calls`` calls or ``max_seconds``."""
    for _ in range(3):
        call()
    lat = []
    deadline = time.perf_counter() + max_seconds
    while len(lat) < max_calls and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        call()["probabilities"].numpy()
        lat.append((time.perf_counter() - t0) * 1000.0)
    return float(np.percentile(lat, 50))


def _floor_p50_ms(saved_model_dir: str, examples: List[bytes], max_calls: int,
                  max_seconds: float, raw_inputs: Optional[Dict[str, Any]] = None) -> float:
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_dir)
    if raw_inputs is not None:
        fn = loaded.signatures["predict_raw"]
        kwargs = {k: tf.constant(v) for k, v in raw_inputs.items()}
    else:
        fn = loaded.signatures["serving_default"]
        kwargs = {"examples": tf.constant(examples)}
    return _p50_ms(lambda: fn(**kwargs), max_calls, max_seconds)


def _graph_floor_p50_ms(saved_model_dir: str, raw_inputs: Dict[str, Any], max_calls: int,
                        max_seconds: float) -> float:
    """p50 of ``predict_raw``'s graph alone: run as the stand-in runs it (inputs as serialized
    protos, the traced function's flat call: :class:`serving.model_server.proto_call.
    ProtoFedSignature`), without TensorFlow's per-call Python argument binding, which
    :func:`_floor_p50_ms`'s signature call pays (~0.15 ms here) and TF Serving does not."""
    import tensorflow as tf

    from serving.model_server.proto_call import ProtoFedSignature

    loaded = tf.saved_model.load(saved_model_dir)  # kept: the signature uses its variables
    fed = ProtoFedSignature(loaded.signatures["predict_raw"])
    protos = {k: tf.make_tensor_proto(v) for k, v in raw_inputs.items()}
    feed = tf.constant([protos[a].SerializeToString() for a in fed.aliases])
    p50 = _p50_ms(lambda: fed._run(feed), max_calls, max_seconds)
    del loaded
    return p50


def _raw_floor_inputs(saved_model_dir: str, user_id: str, cands: Sequence[Mapping[str, Any]],
                      emb: np.ndarray, user_features: Optional[Mapping[str, Any]]
                      ) -> Optional[Dict[str, Any]]:
    """Numpy columns for ``predict_raw`` (None when the model lacks it or a value is missing)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_dir)
    if "predict_raw" not in loaded.signatures:
        return None
    spec = loaded.signatures["predict_raw"].structured_input_signature[1]
    n = len(cands)
    shared = {**(user_features or {}), F.USER_ID: user_id}
    out: Dict[str, Any] = {}
    for name, ts in spec.items():
        if name == F.META_EMBEDDING:
            emb = np.asarray(emb, np.float32)
            out[name] = emb if emb.ndim == 2 else np.tile(emb, (n, 1))
            continue
        vals = [shared[name]] * n if name in shared else [c.get(name) for c in cands]
        if any(v is None for v in vals):
            return None
        out[name] = np.asarray(vals, dtype=object if ts.dtype == tf.string
                               else ts.dtype.as_numpy_dtype)
    return out


def _floor_embeddings(ranker: Any, lookup: Any, user_id: str, cands: Sequence[Mapping[str, Any]],
                      version: int) -> np.ndarray:
    """The embedding the ranker sends for these candidates: ``[E]`` (single block) or ``[n, 2E]``."""
    if not getattr(ranker, "multi_block", False):
        return lookup.lookup([user_id], str(version)).embeddings[0]
    from serving import multi_block

    genres = multi_block.PrimaryGenres()([c.get(F.GENRES) for c in cands])
    return multi_block.candidate_embeddings(lookup, user_id, genres, str(version)).embeddings
