"""Meta-embedding generation (components/meta_embedding_gen): Beam path vs the fine-tune API.

A small LimamlModel at its (seeded) initialisation, built from a LocalEncoder layout on
synthetic data and exported as a real meta block (``assets.extra/meta_block``), is loaded by
``MetaBlockLoader`` inside ``GenerateEmbeddings`` on the DirectRunner. Expected values are
computed independently of ``trainer.tasks.build_support_sets`` (pandas groupby/tail, explicit
padding) and, for the cold-start row, of TF altogether (numpy one-hot + MLP).
"""
from __future__ import annotations

import os
import types
import uuid
from typing import Dict, List, Optional

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest

from components.meta_embedding_gen import generate, inputs, store_io
from components.meta_embedding_gen.meta_block import MetaBlockLoader
from components.meta_embedding_gen.user_batch import UserBatch
from embeddings.record import COLD_START_USER
from limaml.config import EmbeddingConfig, LimamlConfig, MamlConfig, ModelConfig
from limaml.data.synthetic import SyntheticConfig
from limaml.data.synthetic import generate as generate_synthetic
from schema import features as F
from trainer import finetune
from trainer.layout import build_layout
from trainer.local_encoder import LocalEncoder
from trainer.model import LimamlModel

K = 5
VERSION = "17"


def small_config(aggregation: str = "mean", **bigtable) -> LimamlConfig:
    """Tiny model; inner lr and 2 steps large enough that adaptation visibly moves embeddings."""
    return LimamlConfig(
        dataset="synthetic",
        model=ModelConfig(meta_hidden=(8,), embedding_dim=4, global_hidden=(16,),
                          categorical_embedding_dim=4, user_id_buckets=64),
        maml=MamlConfig(inner_lr=0.5, adaptation_steps=2),
        embeddings=EmbeddingConfig(aggregation=aggregation, max_recent=K, users_per_batch=16,
                                   **bigtable))


def sorted_frame(num_users: int = 40, seed: int = 1) -> pd.DataFrame:
    """Synthetic canonical interactions sorted by (user, time, item) with a fresh index."""
    frame = generate_synthetic(SyntheticConfig(num_users=num_users, num_items=30,
                                               mean_interactions=10, sigma_interactions=0.5,
                                               seed=seed))
    return frame.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable").reset_index(drop=True)


def user_table(encoded: Dict[str, np.ndarray], frame: pd.DataFrame) -> UserBatch:
    """The encoded interactions as one columnar batch of whole users (MEG's input unit)."""
    cols = {k: v for k, v in encoded.items() if k != F.ORACLE_PROB}
    cols[F.USER_ID] = frame[F.USER_ID].astype(str).to_numpy().astype(object)
    return UserBatch.group(cols)


def expected_embeddings(model, frame: pd.DataFrame, encoded: Dict[str, np.ndarray], k: int,
                        aggregation: str, as_of: Optional[int] = None,
                        users: Optional[List[str]] = None, maml_cfg: Optional[MamlConfig] = None):
    """Fine-tune API on each user's last ``k`` interactions (<= as_of), support sets built by hand.

    Returns:
        (user ids [U], embeddings [U, E], support sizes [U], last timestamps [U]).
    """
    sel = frame if as_of is None else frame[frame[F.TIMESTAMP] <= as_of]
    if users is not None:
        sel = sel[sel[F.USER_ID].isin(users)]
    tail = sel.groupby(F.USER_ID, sort=True).tail(k)
    groups = tail.groupby(F.USER_ID, sort=True).indices  # positions within ``tail``
    ids = sorted(groups)
    rows = tail.index.to_numpy()
    cols = [c for c in encoded if encoded[c].dtype != object and c not in (F.ORACLE_PROB, F.TIMESTAMP)]
    support = {c: np.zeros((len(ids), k) + encoded[c].shape[1:], encoded[c].dtype) for c in cols}
    mask = np.zeros((len(ids), k), np.float32)
    sizes, last = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64)
    for u, user in enumerate(ids):
        pos = rows[groups[user]]
        n = len(pos)
        for c in cols:
            support[c][u, :n] = encoded[c][pos]
        mask[u, :n] = 1.0
        sizes[u] = n
        last[u] = frame[F.TIMESTAMP].to_numpy()[pos].max()
    emb = finetune.generate_meta_embeddings(model, support, mask, aggregation, maml_cfg).numpy()
    return np.array(ids, dtype=object), emb, sizes, last


def numpy_cold_start(model, frame: pd.DataFrame, encoded: Dict[str, np.ndarray],
                     as_of: Optional[int] = None) -> np.ndarray:
    """Mean over users of the un-adapted meta block output, in numpy (no TF)."""
    lay = model.layout
    assert not lay.meta_multi_hot and not lay.meta_numeric and not lay.use_user_id_in_meta
    sel = frame if as_of is None else frame[frame[F.TIMESTAMP] <= as_of]
    first = sel.groupby(F.USER_ID, sort=True).head(1).index.to_numpy()
    x = np.concatenate([np.eye(vocab)[encoded[name][first]] for name, vocab in lay.meta_categorical],
                       axis=1)
    if model.user_emb is not None:  # each user's own id row is the meta block's last input
        x = np.concatenate([x, model.user_emb.numpy()[encoded["user_hash"][first]]], axis=1)
    p = {k: v.numpy().astype(np.float64) for k, v in model.meta_params.items()}
    h = np.maximum(x @ p["w0"] + p["b0"], 0.0)
    return (h @ p["w1"] + p["b1"]).mean(axis=0)


def export_model_folder(root: str, model, cfg: LimamlConfig, version: str = VERSION) -> str:
    """A model folder with the meta block under ``assets.extra/meta_block`` (what MEG loads)."""
    from components.common.model_layout import meta_block_dir
    from trainer.export import export_meta_block

    folder = os.path.join(root, version)
    export_meta_block(meta_block_dir(folder), model, cfg, version)
    return folder


def run_generation(users: UserBatch, loader, cfg: LimamlConfig, staging: str, as_of: Optional[int] = None,
                   rows_per_group: int = 37) -> None:
    """Grouped Parquet input -> ReadUserBatches -> GenerateEmbeddings + staging (DirectRunner)."""
    store_io.clear_staging(staging)
    path = inputs.write_grouped_parquet(users, staging + "-input", rows_per_group)
    e = cfg.embeddings
    with beam.Pipeline(runner="DirectRunner") as p:
        result = (p | inputs.ReadUserBatches(path)  # pylint: disable=no-value-for-parameter
                  | generate.GenerateEmbeddings(loader, e.max_recent, e.aggregation,  # pylint: disable=no-value-for-parameter
                                                e.users_per_batch, as_of))
        generate.stage_embeddings(result, staging)


def read_staged(staging: str):
    """All staged rows as one EmbeddingBatch sorted by user (cold-start row excluded) + cold."""
    cold = store_io.load_cold(os.path.join(staging, generate.COLD_FILE))
    batches = list(store_io.staged_batches(staging, "x", 0, None))
    ids = np.concatenate([b.user_ids for b in batches])
    order = np.argsort(ids.astype(str))
    cat = lambda name: np.concatenate([getattr(b, name) for b in batches])[order]  # noqa: E731
    return types.SimpleNamespace(user_ids=ids[order], embeddings=cat("embeddings"),
                                 support_size=cat("support_size"),
                                 last_interaction_ts=cat("last_interaction_ts"), cold=cold)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("meg"))
    cfg = small_config()
    frame = sorted_frame()
    enc = LocalEncoder(cfg.model.user_id_buckets).fit(frame)
    encoded = enc.encode(frame, sort=False)
    layout = build_layout(cfg.model, enc.vocab_sizes)
    model = LimamlModel(layout, cfg.model, cfg.maml, seed=cfg.train.seed)  # at initialisation
    if model.user_emb is not None:  # trained-looking id rows, so that every user's row matters
        model.user_emb.assign(np.random.RandomState(5).normal(0, 0.5, model.user_emb.shape))
    folder = export_model_folder(root, model, cfg)
    return types.SimpleNamespace(root=root, cfg=cfg, frame=frame, encoded=encoded, model=model,
                                 folder=folder, loader=MetaBlockLoader(folder),
                                 users=user_table(encoded, frame))


@pytest.fixture(scope="module")
def generated(world):
    staging = os.path.join(world.root, "staging-all")
    run_generation(world.users, world.loader, world.cfg, staging)
    return staging


def test_beam_embeddings_equal_finetune_api_on_last_k(world, generated):
    got = read_staged(generated)
    ids, emb, sizes, last = expected_embeddings(world.model, world.frame, world.encoded, K, "mean")
    np.testing.assert_array_equal(got.user_ids, ids)
    np.testing.assert_allclose(got.embeddings, emb, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(got.support_size, sizes)
    np.testing.assert_array_equal(got.last_interaction_ts, last)
    assert got.embeddings.dtype == np.float32 and sizes.max() == K and sizes.min() < K
    # Fine-tuning really moved the vectors (else the comparison above proves little).
    unadapted = expected_embeddings(world.model, world.frame, world.encoded, K, "mean",
                                    maml_cfg=MamlConfig(adaptation_steps=0))[1]
    assert np.abs(got.embeddings - unadapted).max() > 1e-3


def test_cold_start_is_mean_unadapted_output(world, generated):
    got = read_staged(generated)
    np.testing.assert_allclose(got.cold, numpy_cold_start(world.model, world.frame, world.encoded),
                               atol=1e-5)


def test_as_of_drops_later_interactions(world, tmp_path):
    cfg = small_config("latest")
    as_of = int(np.quantile(world.frame[F.TIMESTAMP], 0.6))
    staging = str(tmp_path / "staging")
    run_generation(world.users, world.loader, cfg, staging, as_of=as_of)
    got = read_staged(staging)
    ids, emb, sizes, last = expected_embeddings(world.model, world.frame, world.encoded, K, "latest",
                                                as_of=as_of)
    all_users = world.frame[F.USER_ID].nunique()
    assert 0 < len(ids) < all_users  # some users only have later interactions: skipped
    np.testing.assert_array_equal(got.user_ids, ids)
    np.testing.assert_allclose(got.embeddings, emb, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(got.support_size, sizes)
    assert got.last_interaction_ts.max() <= as_of
    np.testing.assert_array_equal(got.last_interaction_ts, last)
    np.testing.assert_allclose(
        got.cold, numpy_cold_start(world.model, world.frame, world.encoded, as_of), atol=1e-5)


def _read_both(store_root: str, cfg: LimamlConfig, client, ids: np.ndarray):
    from embeddings.bigtable_store import BigtableEmbeddingStore
    from embeddings.parquet_store import ParquetEmbeddingStore

    pq_store = ParquetEmbeddingStore(store_root)
    batch = pq_store.read_version(VERSION)
    bt = BigtableEmbeddingStore(client.instance(cfg.embeddings.bigtable_instance).table(
        cfg.embeddings.bigtable_table))
    query = np.concatenate([ids, np.array([COLD_START_USER], dtype=object)])
    found = bt.lookup(query, VERSION)
    meta, _ = bt.lookup_metadata(query, VERSION)
    return pq_store, batch, bt, found, meta


def test_write_stores_parquet_and_bigtable_identical_and_rerun_idempotent(
        world, generated, bigtable_emulator, monkeypatch, tmp_path):
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", bigtable_emulator.address)
    cfg = small_config(bigtable_project="p", bigtable_instance="i",
                       bigtable_table=f"meg-{uuid.uuid4().hex[:6]}")
    staged = read_staged(generated)
    store_root = str(tmp_path / "store")
    n = store_io.write_stores(cfg, generated, store_root, VERSION, 1_700_000_000, staged.cold)
    assert n == len(staged.user_ids)
    client = bigtable_emulator.client("p")
    pq_store, batch, bt, found, meta = _read_both(store_root, cfg, client, staged.user_ids)
    order = pd.Index(batch.user_ids).get_indexer(
        np.concatenate([staged.user_ids, [COLD_START_USER]]))
    assert (order >= 0).all() and batch.num_users == n + 1
    assert found.found.all()
    pq_emb = batch.embeddings[order]
    # Bit-identical across stores and to the staged vectors.
    np.testing.assert_array_equal(pq_emb.view(np.uint32), found.embeddings.view(np.uint32))
    np.testing.assert_array_equal(pq_emb[:-1].view(np.uint32), staged.embeddings.view(np.uint32))
    np.testing.assert_array_equal(pq_emb[-1], staged.cold)
    np.testing.assert_array_equal(batch.support_size[order][:-1], staged.support_size)
    np.testing.assert_array_equal(meta[:-1, 0], staged.support_size)
    np.testing.assert_array_equal(meta[:-1, 1], staged.last_interaction_ts)
    np.testing.assert_array_equal(batch.last_interaction_ts[order][:-1], staged.last_interaction_ts)

    # Rerun: generation and commit again -> same single version, same vectors.
    staging2 = str(tmp_path / "staging-rerun")
    run_generation(world.users, world.loader, cfg, staging2)
    store_io.write_stores(cfg, staging2, store_root, VERSION, 1_700_000_001,
                          store_io.load_cold(os.path.join(staging2, generate.COLD_FILE)))
    pq_store2, batch2, bt2, found2, _ = _read_both(store_root, cfg, client, staged.user_ids)
    assert pq_store2.committed_versions() == [VERSION] and bt2.committed_versions() == [VERSION]
    assert batch2.num_users == batch.num_users
    order2 = pd.Index(batch2.user_ids).get_indexer(
        np.concatenate([staged.user_ids, [COLD_START_USER]]))
    np.testing.assert_allclose(batch2.embeddings[order2], pq_emb, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(batch2.embeddings[order2].view(np.uint32),
                                  found2.embeddings.view(np.uint32))
    assert not [p for p in os.listdir(store_root) if p.startswith(".")]  # no temp left behind


def test_rerun_with_stale_staging_parts_does_not_duplicate(world, tmp_path):
    staging = str(tmp_path / "staging")
    os.makedirs(staging)
    with open(os.path.join(staging, "part-00000-of-00009.parquet"), "wb") as f:
        f.write(b"stale")  # an earlier run's part: cleared before the run
    run_generation(world.users.take_users(0, 5), world.loader, world.cfg, staging)
    got = read_staged(staging)
    assert list(got.user_ids) == list(world.users.user_ids[:5])


def test_missing_meta_block_is_named(tmp_path):
    from components.meta_embedding_gen.meta_block import check_meta_block

    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_meta_block(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no meta block"):
        check_meta_block(str(tmp_path))


def test_embeddings_benchmark_smoke(capsys):
    import json

    from benchmarks import embeddings_bench

    assert embeddings_bench.main(["--users", "300", "--items", "50", "--max-recent", "4",
                                  "--users-per-batch", "128", "--stages", "generate,parquet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in rows] == ["generate", "parquet"]
    for r in rows:
        assert r["users"] == 300 and r["users_per_s"] > 0 and r["peak_rss_mb"] > 10
    with pytest.raises(SystemExit):
        embeddings_bench.main(["--stages", "parquet"])  # needs generate
