"""Serving latency of a multi-block model beside the single-block one (``limaml bench serve
--blocks``), on synthetic data, without a pipeline run.

Both models are built the same way, differing only in ``ModelConfig.meta_blocks``:

1. a real Transform (``trainer.preprocessing.preprocessing_fn`` through ``tft_beam``) of
   synthetic interactions (``limaml.data.synthetic``, with genres);
2. an untrained :class:`trainer.model.LimamlModel` on its layout (latency does not depend on
   the weights), exported as a pushed version ``<base>/1`` (global block at the root, meta
   block under ``assets.extra/meta_block/``);
3. its meta embeddings by MEG's own kernel (:func:`components.meta_embedding_gen.generate.embed_users`:
   user rows, and for the multi-block model the ``"<user>#<g>"`` rows of the catalogue's
   primary genres and the cold-start rows), committed to a Parquet store;
4. :func:`benchmarks.serve_bench.run_serve_bench` with the real embedding lookup on that store
   (cache as configured), real candidates (the synthetic items) and a real user.

Rows are :func:`run_serve_bench` rows plus ``model`` (``single_block`` / ``multi_block``).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Sequence

import numpy as np
import tensorflow as tf

from schema import features as F

MODELS = {"single_block": ("user",), "multi_block": ("user", "user_x_genre")}
_DTYPES = {"str": tf.string, "int64": tf.int64, "float64": tf.float32}


def transform_frame(frame, root: str, cfg) -> str:
    """A real Transform of ``frame`` to ``root/transform`` (raw metadata included)."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    from trainer import preprocessing

    cols = list(F.CANONICAL_COLUMNS)
    spec = {k: tf.io.VarLenFeature(_DTYPES[F.CANONICAL_COLUMNS[k]]) for k in cols}
    raw = [{k: [v.encode() if isinstance(v, str) else v] for k, v in r.items()}
           for r in frame[cols].to_dict("records")]
    meta = dataset_metadata.DatasetMetadata.from_feature_spec(spec)
    out = os.path.join(root, "transform")
    with tft_beam.Context(temp_dir=os.path.join(root, "tft-tmp")):
        _, fn = ((raw, meta) | tft_beam.AnalyzeAndTransformDataset(
            lambda x: preprocessing.preprocessing_fn(x, {"limaml_config": cfg.to_json()})))
        _ = fn | tft_beam.WriteTransformFn(out)
    metadata_io.write_metadata(meta, os.path.join(out, tft.TFTransformOutput.RAW_METADATA_DIR))
    return out


def build_model(root: str, frame, transform_dir: str, cfg, blocks: Sequence[str]) -> Dict[str, Any]:
    """Exports one model (``blocks``) to ``root/<name>/serving/1`` and commits its embeddings.

    Returns:
        ``{"base", "store", "embedding_dim", "meta_blocks"}``.
    """
    import tensorflow_transform as tft

    from components.common.model_layout import meta_block_dir
    from components.meta_embedding_gen import generate, store_io
    from components.meta_embedding_gen.genre_rows import cold_genre_table, primary_genres
    from components.meta_embedding_gen.refresh import encode_with_transform
    from components.meta_embedding_gen.user_batch import UserBatch
    from embeddings.parquet_store import ParquetEmbeddingStore
    from embeddings.record import EmbeddingBatch
    from trainer.export import export_global_block, export_meta_block
    from trainer.layout import build_layout
    from trainer.model import LimamlModel
    from trainer.run import vocab_sizes_from_transform

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, meta_blocks=tuple(blocks)))
    tft_output = tft.TFTransformOutput(transform_dir)
    model = LimamlModel(build_layout(cfg.model, vocab_sizes_from_transform(tft_output)),
                        cfg.model, cfg.maml, seed=cfg.train.seed)
    folder = os.path.join(root, "+".join(blocks))
    base = os.path.join(folder, "serving")
    export_global_block(os.path.join(base, "1"), model, tft_output)
    export_meta_block(meta_block_dir(os.path.join(base, "1")), model, cfg, "1")  # a pushed version
    ordered = frame.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable").reset_index(drop=True)
    users = UserBatch.from_grouped(encode_with_transform(ordered, transform_dir))
    e = cfg.embeddings
    genres = np.unique(primary_genres(users.columns[F.GENRES])) if model.genre_params else None
    users = users.select(generate.kernel_feature_keys(model) + [F.GENRES]).latest(e.max_recent)
    out = generate.embed_users(model, users, e.max_recent, e.aggregation, genres)
    n = users.num_users
    batches = [store_io.table_to_batch(out[0], "1", 0),
               EmbeddingBatch.cold_start(out[1] / n, "1", 0)]
    if genres is not None:
        batches.append(store_io.table_to_batch(cold_genre_table(out[2] / n, genres), "1", 0))
    store = ParquetEmbeddingStore(os.path.join(folder, "store"))
    store.write(batches)
    return {"base": base, "store": store, "embedding_dim": cfg.model.embedding_dim,
            "meta_blocks": tuple(blocks)}


def run_block_bench(root: str, users: int = 300, items: int = 200, candidate_counts=(1, 10, 100),
                    concurrencies=(1, 8), max_requests: int = 300, max_seconds: float = 5.0,
                    cache_size: int = 100_000, seed: int = 0) -> List[Dict[str, Any]]:
    """Builds both models on the same synthetic data and benchmarks their serving, in turn.

    Returns:
        :func:`benchmarks.serve_bench.run_serve_bench` rows with ``model`` added, single-block
        rows first.
    """
    from benchmarks.serve_bench import run_serve_bench
    from limaml.config import LimamlConfig, ModelConfig
    from limaml.data.synthetic import SyntheticConfig, generate
    from serving.embedding_lookup import EmbeddingLookup

    cfg = LimamlConfig(model=ModelConfig(user_id_buckets=1024))
    frame = generate(SyntheticConfig(num_users=users, num_items=items, mean_interactions=20,
                                     seed=seed))
    transform_dir = transform_frame(frame, root, cfg)
    pool = (frame[[F.ITEM_ID] + list(F.ITEM_FEATURES)].drop_duplicates(F.ITEM_ID)
            .to_dict("records"))
    pool = [{k: (int(v) if isinstance(v, np.integer) else v) for k, v in c.items()} for c in pool]
    user = frame[F.USER_ID].value_counts().index[0]
    first = frame[frame[F.USER_ID] == user].iloc[0]
    user_features = {k: (int(first[k]) if isinstance(first[k], np.integer) else first[k])
                     for k in F.USER_FEATURES}
    rows: List[Dict[str, Any]] = []
    for name, blocks in MODELS.items():
        built = build_model(root, frame, transform_dir, cfg, blocks)
        lookup = EmbeddingLookup(built["store"], built["embedding_dim"], cache_size=cache_size,
                                 timeout_s=1.0)
        try:
            lookup.warm_up("1")
            for row in run_serve_bench(
                    built["base"], model_name=name, embedding_lookup=lookup,
                    candidate_counts=candidate_counts, max_requests=max_requests,
                    max_seconds=max_seconds, user_id=str(user), user_features=user_features,
                    candidates=pool, concurrencies=concurrencies, meta_blocks=blocks):
                rows.append({"model": name, **row})
        finally:
            lookup.close()
    return rows


def format_side_by_side(rows: Sequence[Dict[str, Any]]) -> str:
    """p50/p99 of both models per (candidates, concurrency), one line each."""
    by = {(r["model"], r["candidates"], r["concurrency"]): r for r in rows}
    keys = sorted({(r["candidates"], r["concurrency"]) for r in rows})
    lines = [f"{'candidates':>10} {'conc':>5} {'single p50':>11} {'multi p50':>10} "
             f"{'single p99':>11} {'multi p99':>10} {'single floor':>12} {'multi floor':>11}"]
    for n, c in keys:
        s, m = by.get(("single_block", n, c)), by.get(("multi_block", n, c))
        if s is None or m is None:
            continue
        lines.append(f"{n:>10} {c:>5} {s['p50_ms']:>11.2f} {m['p50_ms']:>10.2f} "
                     f"{s['p99_ms']:>11.2f} {m['p99_ms']:>10.2f} {s['floor_p50_ms']:>12.2f} "
                     f"{m['floor_p50_ms']:>11.2f}")
    return "\n".join(lines)
