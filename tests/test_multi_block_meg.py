"""MEG of a multi-block model (user + user × primary genre) on hand-made genres.

The world: synthetic users encoded by a LocalEncoder whose genre multi-hots are replaced by
hand-assigned ones, so that the primary genre of every row is known:

* user ``only3``: every row has genre 3 (no row of 5, 11, 20);
* user ``multi``: rows cycle through genres {3}, {5, 11} (primary 5: the lowest bucket) and {11};
* every other user: rows cycle through 3, 5, 11;
* genre 20 appears only on rows after ``as_of`` (of user ``late``): it is in the catalogue
  (every input row), yet no user has a support row of it.

Expected values, worked out without MEG's code:

* the keys: every user, ``user#g`` for g in {3, 5, 11, 20}, the cold-start rows;
* a (user, genre) without support rows of the genre: the un-adapted genre block output of the
  user's own meta features, in numpy (one-hot inputs, ReLU MLP of θ_g);
* a (user, genre) with rows: the fine-tune API on a support set holding *only* that user's
  window rows of that genre (filtered by hand with pandas), with the user's embedding in front;
* ``__cold_start__#g``: the numpy mean over the users of the un-adapted genre output;
* support sizes of the genre rows: hand counts.
"""
from __future__ import annotations

import dataclasses
import os
import types

import apache_beam as beam
import numpy as np
import pytest

from components.meta_embedding_gen import generate, genre_rows, inputs, store_io
from components.meta_embedding_gen.meta_block import MetaBlockLoader, genre_set_arg
from embeddings import entity_keys
from embeddings.record import COLD_START_USER
from schema import features as F
from tests.test_meta_embedding_gen import (
    K,
    expected_embeddings,
    export_model_folder,
    small_config,
    sorted_frame,
    user_table,
)
from trainer import finetune
from trainer.layout import build_layout
from trainer.local_encoder import LocalEncoder
from trainer.model import LimamlModel

MULTI = ("user", "user_x_genre")
CATALOGUE = (3, 5, 11, 20)


def multi_config(genre_combine="concat"):
    """The small config with both blocks; "concat" by default here, whose un-adapted genre slot
    is the genre block's output (the residual slot has its own tests below)."""
    cfg = small_config("mean")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, meta_blocks=MULTI,
                                                              genre_combine=genre_combine))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory, "concat")


def make_world(tmp_path_factory, genre_combine):
    root = str(tmp_path_factory.mktemp("meg_multi"))
    cfg = multi_config(genre_combine)
    frame = sorted_frame(num_users=24, seed=4)
    users = sorted(frame[F.USER_ID].unique())
    rename = {users[0]: "only3", users[1]: "multi", users[2]: "late"}
    frame[F.USER_ID] = frame[F.USER_ID].map(lambda u: rename.get(u, u))
    frame = frame.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable").reset_index(drop=True)
    enc = LocalEncoder(cfg.model.user_id_buckets).fit(frame)
    encoded = enc.encode(frame, sort=False)
    uid = frame[F.USER_ID].to_numpy()
    rank = frame.groupby(F.USER_ID).cumcount().to_numpy()
    hot = np.zeros((len(frame), 64), np.float32)
    cycle = np.array([3, 5, 11])[rank % 3]
    hot[np.arange(len(frame)), cycle] = 1.0
    only3 = uid == "only3"
    hot[only3] = 0.0
    hot[only3, 3] = 1.0
    multi = np.flatnonzero(uid == "multi")
    hot[multi] = 0.0
    pattern = rank[multi] % 3
    hot[multi[pattern == 0], 3] = 1.0
    hot[multi[pattern == 1], 5] = 1.0      # {5, 11}: primary 5
    hot[multi[pattern == 1], 11] = 1.0
    hot[multi[pattern == 2], 11] = 1.0
    as_of = int(np.quantile(frame[F.TIMESTAMP], 0.7))
    late_rows = np.flatnonzero((uid == "late") & (frame[F.TIMESTAMP].to_numpy() > as_of))
    assert late_rows.size and (frame[F.TIMESTAMP].to_numpy()[uid == "late"] <= as_of).any()
    hot[late_rows] = 0.0
    hot[late_rows, 20] = 1.0               # genre 20 only after as_of
    encoded[F.GENRES] = hot
    frame["primary"] = np.argmax(hot, axis=1)
    layout = build_layout(cfg.model, enc.vocab_sizes)
    model = LimamlModel(layout, cfg.model, cfg.maml, seed=cfg.train.seed)
    rng = np.random.RandomState(5)
    if model.user_emb is not None:
        model.user_emb.assign(rng.normal(0, 0.5, model.user_emb.shape))
    for v in model.genre_params.values():  # biases too: every input of the genre block matters
        v.assign(rng.normal(0, 0.6, v.shape))
    folder = export_model_folder(root, model, cfg)
    return types.SimpleNamespace(root=root, cfg=cfg, frame=frame, encoded=encoded, model=model,
                                 folder=folder, as_of=as_of, users=user_table(encoded, frame))


def run_multi(world, staging: str, genres=generate.CATALOGUE, users_per_batch: int = 5):
    store_io.clear_staging(staging)
    path = inputs.write_grouped_parquet(world.users, staging + "-input", 41)
    e = world.cfg.embeddings
    with beam.Pipeline(runner="DirectRunner") as p:
        result = (p | inputs.ReadUserBatches(path)  # pylint: disable=no-value-for-parameter
                  | generate.GenerateEmbeddings(MetaBlockLoader(world.folder), e.max_recent,  # pylint: disable=no-value-for-parameter
                                                e.aggregation, users_per_batch, world.as_of, genres))
        generate.stage_embeddings(result, staging)
    batches = list(store_io.staged_batches(
        staging, "7", 0, store_io.load_cold(os.path.join(staging, generate.COLD_FILE))))
    ids = np.concatenate([b.user_ids for b in batches])
    assert len(set(ids)) == len(ids), "a key was written twice"
    emb = np.concatenate([b.embeddings for b in batches])
    size = np.concatenate([b.support_size for b in batches])
    return {k: (emb[i], int(size[i])) for i, k in enumerate(ids)}


@pytest.fixture(scope="module")
def staged(world):
    return run_multi(world, os.path.join(world.root, "staging"))


def numpy_genre_unadapted(model, encoded, row: int, genre: int) -> np.ndarray:
    """f_g([one-hot meta features of ``row``, one-hot(genre)]; θ_g) in numpy (ReLU MLP)."""
    lay = model.layout
    assert not lay.meta_multi_hot and not lay.meta_numeric and not lay.use_user_id_in_meta
    x = np.concatenate([np.eye(v)[encoded[n][row]] for n, v in lay.meta_categorical]
                       + [np.eye(64)[genre]])
    p = {k: v.numpy().astype(np.float64) for k, v in model.genre_params.items()}
    return np.maximum(x @ p["w0"] + p["b0"], 0.0) @ p["w1"] + p["b1"]


def window(world, user):
    sel = world.frame[(world.frame[F.USER_ID] == user) & (world.frame[F.TIMESTAMP] <= world.as_of)]
    return sel.tail(K)


def test_keys_are_users_user_x_catalogue_genres_and_cold_rows(world, staged):
    users = sorted(world.frame[world.frame[F.TIMESTAMP] <= world.as_of][F.USER_ID].unique())
    want = set(users) | {f"{u}#{g}" for u in users for g in CATALOGUE}
    want |= {COLD_START_USER} | {f"{COLD_START_USER}#{g}" for g in CATALOGUE}
    assert set(staged) == want


def test_user_rows_are_the_single_block_embeddings(world, staged):
    ids, emb, sizes, _ = expected_embeddings(world.model, world.frame, world.encoded, K, "mean",
                                             as_of=world.as_of)
    for u, e, n in zip(ids, emb, sizes):
        np.testing.assert_allclose(staged[u][0], e, atol=1e-5, rtol=1e-5)
        assert staged[u][1] == n


def test_genre_without_support_rows_is_the_users_own_unadapted_output(world, staged):
    checked = 0
    for user in sorted(set(world.frame[F.USER_ID])):
        win = window(world, user)
        if win.empty:
            continue
        first = int(win.index[0])
        for g in CATALOGUE:
            if (win["primary"] == g).any():
                continue
            vec, size = staged[f"{user}#{g}"]
            np.testing.assert_allclose(vec, numpy_genre_unadapted(world.model, world.encoded, first, g),
                                       atol=1e-5, rtol=1e-5)
            assert size == 0
            checked += 1
    assert checked >= len(set(world.frame[F.USER_ID])) - 1  # genre 20 for all (+ only3's 5, 11)
    # the fallback is user-specific: two users' un-adapted genre-20 rows differ
    assert np.abs(staged["only3#20"][0] - staged["multi#20"][0]).max() > 1e-4


def test_genre_with_support_rows_is_adapted_on_exactly_those_rows(world, staged):
    model, enc = world.model, world.encoded
    keys = generate.kernel_feature_keys(model)
    for user, g in (("only3", 3), ("multi", 5), ("multi", 11), ("multi", 3)):
        win = window(world, user)
        rows = win.index[win["primary"] == g].to_numpy()
        assert 0 < len(rows) < K or user == "only3"
        support = {c: np.zeros((1, K) + enc[c].shape[1:], enc[c].dtype) for c in keys}
        for c in keys:
            support[c][0, :len(rows)] = enc[c][rows]
        mask = np.zeros((1, K), np.float32)
        mask[0, :len(rows)] = 1.0
        e_user = staged[user][0][None, :]
        want = finetune.generate_genre_embeddings(model, support, mask, np.array([[g]]), e_user)
        vec, size = staged[f"{user}#{g}"]
        np.testing.assert_allclose(vec, want.numpy()[0, 0], atol=1e-5, rtol=1e-5)
        assert size == len(rows)
        unadapted = numpy_genre_unadapted(model, enc, int(win.index[0]), g)
        assert np.abs(vec - unadapted).max() > 1e-4, "adaptation did not move the genre row"


def test_cold_genre_rows_are_the_mean_unadapted_genre_outputs(world, staged):
    sel = world.frame[world.frame[F.TIMESTAMP] <= world.as_of]
    firsts = sel.groupby(F.USER_ID, sort=True).head(1).index.to_numpy()
    for g in CATALOGUE:
        want = np.mean([numpy_genre_unadapted(world.model, world.encoded, r, g) for r in firsts], axis=0)
        np.testing.assert_allclose(staged[f"{COLD_START_USER}#{g}"][0], want, atol=1e-5)


def test_fixed_genre_list_and_model_checks(world, tmp_path):
    got = run_multi(world, str(tmp_path / "fixed"), genres=[11, 3], users_per_batch=64)
    assert {k.partition("#")[2] for k in got if "#" in k} == {"3", "11"}
    with pytest.raises(ValueError, match="genres='drama'"):
        generate.GenerateDoFn(MetaBlockLoader(world.folder), K, "mean", 4, genres="drama")
    with pytest.raises(ValueError, match="listed twice"):
        generate.GenerateDoFn(MetaBlockLoader(world.folder), K, "mean", 4, genres=[3, 3])
    dofn = generate.GenerateDoFn(MetaBlockLoader(world.folder), K, "mean", 4)  # no genres
    with pytest.raises(ValueError, match="user × genre block"):
        dofn.setup()
    assert genre_set_arg(world.folder) == generate.CATALOGUE


def test_single_block_model_refuses_genres_and_writes_no_genre_rows(world, tmp_path):
    cfg = small_config("mean")
    model = LimamlModel(world.model.layout.__class__.from_dict(world.model.layout.to_dict()),
                        cfg.model, cfg.maml, seed=0)
    folder = export_model_folder(str(tmp_path), model, cfg)
    assert genre_set_arg(folder) is None
    dofn = generate.GenerateDoFn(MetaBlockLoader(folder), K, "mean", 4, genres=[3])
    with pytest.raises(ValueError, match="no user × genre block"):
        dofn.setup()


def test_user_id_with_the_separator_is_refused_by_name(world):
    ids = np.array(["a", "b#2"], dtype=object)
    with pytest.raises(ValueError, match="'b#2'"):
        entity_keys.check_user_ids(ids)
    assert list(entity_keys.genre_keys(["a", "é"], [3, 17])) == ["a#3", "a#17", "é#3", "é#17"]
    assert list(entity_keys.owner_users(["a#3", "b", "__cold_start__#4"])) == ["a", "b", "__cold_start__"]
    np.testing.assert_array_equal(genre_rows.primary_genres(np.eye(64)[[0, 9]] + np.eye(64)[[12, 40]]), [0, 9])


def test_genre_layout_assumption(world):
    """The genre multi-hot is the model's first global multi-hot, 64 buckets (keys' contract)."""
    assert world.model.layout.global_multi_hot[0] == (F.GENRES, 64)


def test_write_stores_commits_both_kinds_and_counts_users(world, staged, tmp_path):
    from embeddings.parquet_store import ParquetEmbeddingStore

    staging = os.path.join(world.root, "staging")  # written by the ``staged`` fixture
    root = str(tmp_path / "store")
    n = store_io.write_stores(world.cfg, staging, root, "7", 5,
                              store_io.load_cold(os.path.join(staging, generate.COLD_FILE)))
    users = [k for k in staged if "#" not in k and k != COLD_START_USER]
    assert n == len(users)
    keys = sorted(staged)
    got = ParquetEmbeddingStore(root).lookup(keys, "7")
    assert got.found.all()
    np.testing.assert_array_equal(got.embeddings, np.stack([staged[k][0] for k in keys]))


@pytest.fixture(scope="module")
def residual_world(tmp_path_factory):
    return make_world(tmp_path_factory, "residual")


def test_a_residual_models_genre_rows_are_zero_without_rows_of_the_genre_and_adapted_with(
        residual_world):
    """genre_combine="residual": MEG writes Δ_u,g, exactly 0 for a genre with no support row of
    the user (and for the cold-start genre rows), the kernel's adapted change otherwise."""
    world = residual_world
    staged = run_multi(world, os.path.join(world.root, "staging"))
    model, enc = world.model, world.encoded
    zero, moved = 0, 0
    for user in sorted(set(world.frame[F.USER_ID])):
        win = window(world, user)
        for g in CATALOGUE:
            vec, size = staged[f"{user}#{g}"]
            if win.empty or not (win["primary"] == g).any():
                assert size == 0 and np.abs(vec).max() == 0.0, (user, g)
                zero += 1
    for user, g in (("only3", 3), ("multi", 5), ("multi", 11)):
        win = window(world, user)
        rows = win.index[win["primary"] == g].to_numpy()
        keys = generate.kernel_feature_keys(model)
        support = {c: np.zeros((1, K) + enc[c].shape[1:], enc[c].dtype) for c in keys}
        for c in keys:
            support[c][0, :len(rows)] = enc[c][rows]
        mask = np.zeros((1, K), np.float32)
        mask[0, :len(rows)] = 1.0
        want = finetune.generate_genre_embeddings(model, support, mask, np.array([[g]]),
                                                  staged[user][0][None, :])
        vec, size = staged[f"{user}#{g}"]
        np.testing.assert_allclose(vec, want.numpy()[0, 0], atol=1e-5, rtol=1e-5)
        assert size == len(rows) and np.abs(vec).max() > 1e-4
        moved += 1
    assert zero >= len(set(world.frame[F.USER_ID])) - 1 and moved == 3
    for g in CATALOGUE:
        assert np.abs(staged[f"{COLD_START_USER}#{g}"][0]).max() == 0.0
