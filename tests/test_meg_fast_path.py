"""MEG kernel fast path (trainer/finetune.py): width-grouped chunks, no padding.

``generate_meta_embeddings`` cuts each user's padded grid after its last valid position, groups
users by width and runs each group in chunks of at most ``CHUNK_ROWS // width`` users.
The expected values are computed independently: the traceable body
(``generate_meta_embeddings_fn``) run eagerly on one user at a time, on the user's whole padded
grid. Users of every support size (none, 1, ..., K, a hole in the mask), an odd number of users
so that chunks are ragged, small chunk sizes so that one call makes many chunks.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_meta_embedding_gen import K, small_config, sorted_frame
from trainer import finetune
from trainer.layout import build_layout
from trainer.local_encoder import LocalEncoder
from trainer.model import LimamlModel

USERS = 37


@pytest.fixture(scope="module")
def world():
    cfg = small_config()
    frame = sorted_frame(num_users=40)
    enc = LocalEncoder(cfg.model.user_id_buckets).fit(frame)
    encoded = enc.encode(frame, sort=False)
    model = LimamlModel(build_layout(cfg.model, enc.vocab_sizes), cfg.model, cfg.maml, seed=3)
    rng = np.random.default_rng(0)
    cols = [c for c in encoded if encoded[c].dtype != object and c not in ("oracle_prob", "timestamp")]
    rows = rng.integers(0, len(frame), size=(USERS, K))
    support = {c: encoded[c][rows] for c in cols}
    sizes = np.arange(USERS) % (K + 1)  # 0..K valid positions, every size several times
    mask = (np.arange(K)[None, :] < sizes[:, None]).astype(np.float32)
    mask[5, :] = [1, 0, 1, 0, 0]  # a hole: the grid is cut after the last valid position
    for c in cols:  # padding positions hold zeros (what the support windows build)
        m = mask.reshape(mask.shape + (1,) * (support[c].ndim - 2))
        support[c] = np.where(m > 0, support[c], np.zeros((), support[c].dtype))
    # users without a valid position still carry their meta features in row 0
    for c in cols:
        support[c][sizes == 0, 0] = encoded[c][rows[sizes == 0, 0]]
    return cfg, model, support, mask


def per_user_reference(model, support, mask, aggregation):
    """One user at a time, the whole padded grid, eager (no tf.function, no width groups)."""
    steps, lr = model.maml_cfg.adaptation_steps, model.maml_cfg.inner_lr
    out = [finetune.generate_meta_embeddings_fn(
        model, {k: v[u:u + 1] for k, v in support.items()}, mask[u:u + 1], aggregation, steps,
        None if model.inner_lrs else lr).numpy()[0] for u in range(mask.shape[0])]
    return np.stack(out)


@pytest.mark.parametrize("aggregation", ["mean", "latest", "max"])
def test_fast_path_equals_per_user_kernel(world, monkeypatch, aggregation):
    _, model, support, mask = world
    monkeypatch.setattr(finetune, "FAST_PATH_MIN_USERS", 1)
    monkeypatch.setattr(finetune, "CHUNK_ROWS", 12)   # width 2: 6 users a chunk, width 5: 2
    monkeypatch.setattr(finetune, "WIDTH_LADDER", (1, 2, 4))
    got = finetune.generate_meta_embeddings(model, support, mask, aggregation).numpy()
    want = per_user_reference(model, support, mask, aggregation)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the small-call path (one graph on the whole grid) agrees too
    monkeypatch.setattr(finetune, "FAST_PATH_MIN_USERS", 10_000)
    whole = finetune.generate_meta_embeddings(model, support, mask, aggregation).numpy()
    np.testing.assert_allclose(whole, want, rtol=1e-5, atol=1e-5)


def test_ragged_batches_reuse_one_trace(world, monkeypatch):
    """Chunks and batches of any size, fast path or whole grid, run on one trace."""
    _, model, support, mask = world
    monkeypatch.setattr(finetune, "CHUNK_ROWS", 12)
    monkeypatch.setattr(finetune, "WIDTH_LADDER", (2,))
    finetune._FN_CACHE.clear()
    for min_users in (1, 10_000):  # the fast path (ragged chunks), then the whole grid
        monkeypatch.setattr(finetune, "FAST_PATH_MIN_USERS", min_users)
        for n, s in ((USERS, K), (31, K), (17, K), (9, K), (4, 3)):
            finetune.generate_meta_embeddings(model, {k: v[:n, :s] for k, v in support.items()},
                                              mask[:n, :s], "mean")
    fn = finetune._kernel(model, "mean", model.maml_cfg, finetune._signature(support))
    assert fn.experimental_get_tracing_count() == 1


def test_chunk_plan_covers_every_user_once_at_a_wide_enough_width():
    rng = np.random.default_rng(1)
    s = 32
    sizes = np.minimum(rng.geometric(0.12, size=1001), s)
    sizes[::50] = 0
    mask = (np.arange(s)[None, :] < sizes[:, None]).astype(np.float32)
    plan = finetune._chunk_plan(mask, (4, 8, 16), 256)
    seen = np.concatenate([idx for _, idx in plan])
    assert np.array_equal(np.sort(seen), np.arange(1001))   # every user once, no padding
    need = np.maximum(sizes, 1)
    narrowest = np.select([need <= 4, need <= 8, need <= 16], [4, 8, 16], 32)
    for width, idx in plan:
        assert 1 <= idx.shape[0] <= 256 // width
        assert np.all(narrowest[idx] == width)       # the narrowest width that holds the user
    calls = {w: sum(1 for x, _ in plan if x == w) for w in (4, 8, 16, 32)}
    assert calls == {w: -(-int((narrowest == w).sum()) // (256 // w)) for w in calls}


def test_default_ladder_cuts_a_long_window_to_each_users_rows():
    """With a 128-row window the default ladder runs a 20-row user at width 32 and a 50-row
    user at 64; only users past 64 rows pay for 128. Widths >= S are skipped (S=32: 32 is S)."""
    sizes = np.array([3, 20, 50, 100, 128])
    mask = (np.arange(128)[None, :] < sizes[:, None]).astype(np.float32)
    widths, bucket = finetune._widths(mask, finetune.WIDTH_LADDER)
    assert widths[bucket].tolist() == [4, 32, 64, 128, 128]
    widths32, _ = finetune._widths(mask[:, :32], finetune.WIDTH_LADDER)
    assert widths32.tolist() == [4, 8, 16, 32]


def test_fast_path_rejects_out_of_range_ids(world, monkeypatch):
    """An id outside the vocabulary is named before any kernel call."""
    _, model, support, mask = world
    monkeypatch.setattr(finetune, "FAST_PATH_MIN_USERS", 1)
    name, vocab = model.layout.global_categorical[0]
    bad = dict(support)
    bad[name] = support[name].copy()
    bad[name][3, 0] = vocab
    with pytest.raises(ValueError, match=name):
        finetune.generate_meta_embeddings(model, bad, mask, "mean")


@pytest.mark.parametrize("min_users", [1, 10_000])  # the fast path, then the whole grid
def test_embeddings_from_rows_equal_the_grid_kernel(world, monkeypatch, min_users):
    """Support sets given as row indices into flat columns (what MEG's support windows are):
    masked positions point at arbitrary rows, which must not matter; the users' rows are
    shuffled in the flat columns."""
    _, model, support, mask = world
    monkeypatch.setattr(finetune, "FAST_PATH_MIN_USERS", min_users)
    monkeypatch.setattr(finetune, "CHUNK_ROWS", 12)
    monkeypatch.setattr(finetune, "WIDTH_LADDER", (1, 2, 4))
    rng = np.random.default_rng(7)
    u, k = mask.shape
    perm = rng.permutation(u * k)                       # flat row r holds grid cell perm[r]
    rows = {c: v.reshape((u * k,) + v.shape[2:])[perm] for c, v in support.items()}
    index = np.argsort(perm).reshape(u, k)              # the row of each grid cell
    index = np.where(mask > 0, index, rng.integers(0, u * k, size=(u, k)))
    index[mask.sum(axis=1) == 0, 0] = np.argsort(perm).reshape(u, k)[mask.sum(axis=1) == 0, 0]
    got = finetune.embeddings_from_rows(model, rows, index, mask, "mean")
    want = per_user_reference(model, support, mask, "mean")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
