"""Columnar MEG (components/meta_embedding_gen: user_batch, support_window, inputs, generate,
bigtable_sink): the Beam path equals the fine-tune kernel run on hand-stacked support sets.

The world: synthetic users encoded by a LocalEncoder, edited so that it holds a user with more
than K rows, a user with a single row and a user whose rows all come after ``as_of`` (cold: no
row), every user's timestamps distinct. Expected values are built with plain Python loops over
each user's rows (filter by ``as_of``, sort by time, keep the last K, pad), then the kernel
(``finetune.generate_meta_embeddings``) runs once on the whole hand-stacked batch; the columnar
path runs on the DirectRunner with kernel calls of other sizes, hence the float tolerance.
"""
from __future__ import annotations

import types
import uuid

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest

from components.meta_embedding_gen import generate, inputs, store_io
from components.meta_embedding_gen.meta_block import MetaBlockLoader
from components.meta_embedding_gen.support_window import support_windows
from components.meta_embedding_gen.user_batch import UserBatch, user_cuts
from schema import features as F
from tests.test_meta_embedding_gen import VERSION, K, export_model_folder, read_staged, small_config, sorted_frame
from trainer import finetune
from trainer.layout import build_layout
from trainer.local_encoder import LocalEncoder
from trainer.model import LimamlModel

LONG, SINGLE, COLD = "long", "single-é", "cold"  # a non-ASCII id: UTF-8 through tf.Example and Arrow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("megcol"))
    cfg = small_config("mean")
    frame = sorted_frame(num_users=50, seed=3)
    enc = LocalEncoder(cfg.model.user_id_buckets).fit(frame)
    cols = enc.encode(frame, sort=False)
    cols.pop(F.ORACLE_PROB, None)
    uid = frame[F.USER_ID].astype(str).to_numpy().astype(object)
    users = sorted(set(uid))
    # Rename three users and edit their rows: > K rows, a single row, only rows after as_of.
    counts = {u: int((uid == u).sum()) for u in users}
    long_u = max(users, key=counts.get)
    assert counts[long_u] > K + 2
    single_u, cold_u = [u for u in users if u != long_u and counts[u] >= 2][:2]
    keep = np.ones(uid.shape[0], bool)
    keep[np.flatnonzero(uid == single_u)[1:]] = False
    cols = {k: v[keep] for k, v in cols.items()}
    uid = uid[keep]
    uid = np.where(uid == long_u, LONG, np.where(uid == single_u, SINGLE, np.where(uid == cold_u, COLD, uid)))
    cols[F.USER_ID] = uid.astype(object)
    # Distinct timestamps: rank within user (frame order = time order) on a per-user base.
    ts = np.zeros(uid.shape[0], np.int64)
    for u in set(uid):
        idx = np.flatnonzero(uid == u)
        ts[idx] = 1_000_000 + 10 * np.arange(idx.size) + len(str(u)) % 7
    as_of = 1_000_000 + 10 * (K + 1)  # LONG keeps K+2 rows (> K), others all or most of theirs
    ts[uid == COLD] += 10 * 10_000  # every COLD row is after as_of
    cols[F.TIMESTAMP] = ts
    # Unsorted input: rows shuffled.
    order = np.random.default_rng(0).permutation(uid.shape[0])
    cols = {k: v[order] for k, v in cols.items()}
    layout = build_layout(cfg.model, enc.vocab_sizes)
    model = LimamlModel(layout, cfg.model, cfg.maml, seed=cfg.train.seed)
    if model.user_emb is not None:
        model.user_emb.assign(np.random.RandomState(7).normal(0, 0.5, model.user_emb.shape))
    folder = export_model_folder(root, model, cfg)
    return types.SimpleNamespace(root=root, cfg=cfg, cols=cols, as_of=as_of, model=model,
                                 loader=MetaBlockLoader(folder))


def hand_stacked(world, as_of):
    """Expected (ids, embeddings, sizes, last ts, cold) by Python loops over each user's rows."""
    cols, model = world.cols, world.model
    keys = generate.kernel_feature_keys(model)
    ids = sorted(u for u in set(cols[F.USER_ID])
                 if (as_of is None or (cols[F.TIMESTAMP][cols[F.USER_ID] == u] <= as_of).any()))
    support = {k: np.zeros((len(ids), K) + cols[k].shape[1:], cols[k].dtype) for k in keys}
    mask = np.zeros((len(ids), K), np.float32)
    sizes, last = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64)
    for u, user in enumerate(ids):
        rows = [i for i in range(cols[F.USER_ID].shape[0]) if cols[F.USER_ID][i] == user
                and (as_of is None or cols[F.TIMESTAMP][i] <= as_of)]
        rows = sorted(rows, key=lambda i: cols[F.TIMESTAMP][i])[-K:]
        for j, i in enumerate(rows):
            for k in keys:
                support[k][u, j] = cols[k][i]
            mask[u, j] = 1.0
        sizes[u], last[u] = len(rows), cols[F.TIMESTAMP][rows[-1]]
    emb = finetune.generate_meta_embeddings(model, support, mask, world.cfg.embeddings.aggregation).numpy()
    first = {k: support[k][:, 0] for k in model.layout.meta_feature_names}
    cold = finetune.cold_start_embedding(model, first).numpy().mean(axis=0)
    return np.array(ids, dtype=object), emb, sizes, last, cold


def run(world, source, staging, users_per_batch, as_of):
    cfg = world.cfg
    store_io.clear_staging(staging)
    e = cfg.embeddings
    with beam.Pipeline(runner="DirectRunner") as p:
        result = (p | source
                  | generate.GenerateEmbeddings(world.loader, e.max_recent, e.aggregation,  # pylint: disable=no-value-for-parameter
                                                users_per_batch, as_of))
        generate.stage_embeddings(result, staging)
    return read_staged(staging)


def check(got, want):
    ids, emb, sizes, last, cold = want
    np.testing.assert_array_equal(got.user_ids, ids)
    np.testing.assert_allclose(got.embeddings, emb, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(got.support_size, sizes)
    np.testing.assert_array_equal(got.last_interaction_ts, last)
    np.testing.assert_allclose(got.cold, cold, atol=1e-6)


def test_hand_stacked_world_has_the_edge_cases(world):
    ids, _, sizes, _, _ = hand_stacked(world, world.as_of)
    size = dict(zip(ids, sizes))
    assert COLD not in size                       # no row as of as_of: skipped (store's cold row)
    assert size[SINGLE] == 1
    assert size[LONG] == K and (world.cols[F.USER_ID] == LONG).sum() > K + 1
    assert not np.array_equal(np.sort(world.cols[F.USER_ID]), world.cols[F.USER_ID])  # unsorted


@pytest.mark.parametrize("rows_per_group,users_per_batch", [(3, 2), (1000, 16), (7, 5)])
def test_parquet_path_equals_kernel_on_hand_stacked_supports(world, tmp_path, rows_per_group,
                                                             users_per_batch):
    batch = UserBatch.group(world.cols)  # unsorted input grouped by user, time order
    path = inputs.write_grouped_parquet(batch, str(tmp_path / "in"), rows_per_group)
    got = run(world, inputs.ReadUserBatches(path), str(tmp_path / "st"),  # pylint: disable=no-value-for-parameter
              users_per_batch, world.as_of)
    check(got, hand_stacked(world, world.as_of))


def test_row_groups_share_one_schema_wide_enough_for_every_group(tmp_path):
    # The first group's ids fit uint8 and its multi-hot is 0/1; later groups need int16 / floats.
    cols = {F.USER_ID: np.array(["a", "a", "b", "c", "c"], object),
            F.TIMESTAMP: np.array([1, 2, 3, 4, 5], np.int64),
            F.ITEM_ID: np.array([1, 2, 1000, 3, -4], np.int64),
            F.GENRES: np.array([[0, 1], [1, 0], [0, 1], [0.5, 1], [1, 1]], np.float32)}
    path = inputs.write_grouped_parquet(UserBatch.from_grouped(cols), str(tmp_path / "in"), 1)
    f = pq.ParquetFile(path)
    assert f.num_row_groups == 3
    assert f.schema_arrow.field(F.ITEM_ID).type == "int16"
    back = [inputs.arrow_to_columns(f.read_row_group(i)) for i in range(3)]
    for name in (F.ITEM_ID, F.GENRES, F.TIMESTAMP):
        got = np.concatenate([b[name] for b in back])
        np.testing.assert_array_equal(got, cols[name], err_msg=name)
        assert len({b[name].dtype for b in back}) == 1, name
    assert back[0][F.GENRES].dtype == np.float32  # not 0/1 in every group: kept as floats


def test_without_as_of_cold_user_is_generated_too(world, tmp_path):
    batch = UserBatch.group(world.cols)
    path = inputs.write_grouped_parquet(batch, str(tmp_path / "in"), 11)
    got = run(world, inputs.ReadUserBatches(path), str(tmp_path / "st"), 4, None)  # pylint: disable=no-value-for-parameter
    want = hand_stacked(world, None)
    assert COLD in set(want[0])
    check(got, want)


def _write_examples(cols, path):
    import tensorflow as tf

    spec = {}
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for i in range(cols[F.USER_ID].shape[0]):
            feats = {}
            for k, v in cols.items():
                x = v[i]
                if v.dtype == object:
                    feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(x).encode()]))
                    spec[k] = tf.io.FixedLenFeature([], tf.string)
                elif np.issubdtype(v.dtype, np.integer):
                    feats[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=np.ravel(x).tolist()))
                    spec[k] = tf.io.FixedLenFeature(list(v.shape[1:]), tf.int64)
                else:
                    feats[k] = tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(x).tolist()))
                    spec[k] = tf.io.FixedLenFeature(list(v.shape[1:]), tf.float32)
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return spec


@pytest.mark.parametrize("buckets", [1, 3])
def test_examples_path_with_shuffled_records_equals_hand_stacked(world, tmp_path, buckets):
    """Records in random order, parsed in batches that cut users apart, regrouped by bucket."""
    big = world.cols
    path = str(tmp_path / "ex.gz")
    spec = _write_examples(big, path)
    assert big[F.USER_ID].shape[0] > 256  # > BatchElements' first batch: users span parse batches
    src = inputs.ReadUserBatchesFromExamples(path, spec, buckets)  # pylint: disable=no-value-for-parameter
    got = run(world, src, str(tmp_path / "st"), 4, world.as_of)
    check(got, hand_stacked(world, world.as_of))


def test_user_cuts_fall_on_user_boundaries():
    offsets = np.array([0, 3, 8, 9, 13])  # users of 3, 5, 1 and 4 rows
    assert user_cuts(offsets, 4) == [0, 2, 4]   # rows [0, 8) then [8, 13)
    assert user_cuts(offsets, 3) == [0, 1, 2, 4]  # 3 | 5 (alone, > 3) | 1 + 4
    assert user_cuts(offsets, 100) == [0, 4]
    assert user_cuts(offsets, 1) == [0, 1, 2, 3, 4]
    assert user_cuts(np.array([0]), 5) == [0]


def test_row_group_boundary_inside_a_user_does_not_split_it(world, tmp_path):
    batch = UserBatch.group(world.cols)
    path = inputs.write_grouped_parquet(batch, str(tmp_path / "in"), 3)
    pf = pq.ParquetFile(path)
    seen = set()
    for g in range(pf.num_row_groups):
        ids = set(pf.read_row_group(g, columns=[F.USER_ID]).column(F.USER_ID).to_pylist())
        assert not ids & seen, f"row group {g} repeats users {ids & seen}"
        seen |= ids
    assert pf.num_row_groups > 1 and seen == set(world.cols[F.USER_ID])
    # each group holds every row of its users
    total = sum(pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups))
    assert total == world.cols[F.USER_ID].shape[0]


def test_string_columns_come_back_as_str_one_object_per_distinct_value():
    import pyarrow as pa

    ids = ["u1", "u1", "é2", "u3", "u3", "u3"]
    got = inputs.arrow_to_columns(pa.table({F.USER_ID: pa.array(ids, pa.string())}))[F.USER_ID]
    assert got.dtype == object and got.tolist() == ids and all(type(v) is str for v in got)
    assert got[0] is got[1] and got[3] is got[4] is got[5]  # rows share their value's str
    with_null = inputs.arrow_to_columns(pa.table({"s": pa.array(["a", None, "a"], pa.string())}))
    assert with_null["s"].tolist() == ["a", None, "a"]


def test_matrix_columns_round_trip_as_fixed_size_binary_and_old_list_files_still_read(tmp_path):
    import pyarrow as pa

    rng = np.random.RandomState(0)
    cols = {F.USER_ID: np.array(["u1", "u1", "é2", "u3", "u3"], object),
            F.TIMESTAMP: np.arange(5, dtype=np.int64),
            F.GENRES: (rng.rand(5, 7) < 0.4).astype(np.float32),
            "weights": rng.rand(5, 3).astype(np.float32),
            "small": rng.randint(0, 255, (5, 3)).astype(np.uint8)}
    table = inputs.columns_to_arrow(cols)
    # stored as one fixed-size binary value per row, not a list of W values (6-15x slower);
    # the 0/1 multi-hot as uint8 (7 bytes a row), the other float matrix as float32
    assert table.schema.field(F.GENRES).type == pa.binary(7)
    assert table.schema.field("weights").type == pa.binary(12)
    path = str(tmp_path / "m.parquet")
    pq.write_table(table, path, row_group_size=2)
    f = pq.ParquetFile(path)
    parts = [inputs.arrow_to_columns(f.read_row_group(i)) for i in range(f.num_row_groups)]
    # numbers come back in the narrowest dtype holding them: timestamps 0..4 and the 0/1
    # multi-hot as uint8, the other float matrix as it was
    narrow = {F.USER_ID: object, F.TIMESTAMP: np.uint8, F.GENRES: np.uint8,
              "weights": np.float32, "small": np.uint8}
    for name, want in cols.items():
        got = np.concatenate([p[name] for p in parts])
        assert got.dtype == narrow[name] and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want)
    sliced = inputs.arrow_to_columns(table.slice(3, 2))  # an Arrow offset into the buffer
    np.testing.assert_array_equal(sliced[F.GENRES], cols[F.GENRES][3:])
    # a file of the previous layout (W values per row as a fixed-size list)
    old = pa.table({F.GENRES: pa.FixedSizeListArray.from_arrays(
        pa.array(cols[F.GENRES].reshape(-1)), 7)})
    np.testing.assert_array_equal(inputs.arrow_to_columns(old)[F.GENRES], cols[F.GENRES])
    with pytest.raises(ValueError, match="no values per row"):
        inputs.columns_to_arrow({"empty": np.zeros((2, 0), np.float32)})


def test_latest_and_windows_by_hand():
    cols = {F.USER_ID: np.array(["b", "a", "b", "a", "b", "c"], dtype=object),
            F.TIMESTAMP: np.array([30, 20, 10, 10, 20, 5]),
            "x": np.array([3.0, 2.0, 1.0, 1.5, 2.5, 9.0], np.float32),
            "g": np.arange(12, dtype=np.float32).reshape(6, 2)}
    b = UserBatch.group(cols)
    assert list(b.user_ids) == ["a", "b", "c"] and list(b.counts) == [2, 3, 1]
    w = support_windows(b.latest(2), 2, ["x", "g"])
    np.testing.assert_array_equal(w.support["x"], [[1.5, 2.0], [2.5, 3.0], [9.0, 0.0]])
    np.testing.assert_array_equal(w.support["g"][1], [[8, 9], [0, 1]])
    np.testing.assert_array_equal(w.support["g"][2], [[10, 11], [0, 0]])
    np.testing.assert_array_equal(w.mask, [[1, 1], [1, 1], [1, 0]])
    np.testing.assert_array_equal(w.size, [2, 2, 1])
    np.testing.assert_array_equal(w.last_ts, [20, 30, 5])
    cut = b.not_after(10)
    assert list(cut.user_ids) == ["a", "b", "c"] and list(cut.counts) == [1, 1, 1]
    np.testing.assert_array_equal(cut.columns["x"], [1.5, 1.0, 9.0])
    assert list(b.not_after(9).user_ids) == ["c"]


def test_workers_write_bigtable_rows_invisible_until_pointer(world, tmp_path, bigtable_emulator,
                                                             monkeypatch):
    """Executor flow: begin_write, rows from the Beam workers, then cold row + pointer last."""
    from components.meta_embedding_gen.bigtable_sink import BigtableTarget, WriteBigtableRows
    from embeddings.bigtable_store import BigtableEmbeddingStore
    from embeddings.record import COLD_START_USER, VersionNotCommittedError

    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", bigtable_emulator.address)
    table_id = f"megcol-{uuid.uuid4().hex[:6]}"
    cfg = small_config("mean", bigtable_project="p", bigtable_instance="i", bigtable_table=table_id)
    store = store_io.open_bigtable(cfg)
    attempt = store.begin_write(VERSION)
    sink = WriteBigtableRows(BigtableTarget("p", "i", table_id, attempt, 1_700_000_000,
                                            write_threads=3, mutation_chunk_rows=4))
    staging = str(tmp_path / "st")
    store_io.clear_staging(staging)
    path = inputs.write_grouped_parquet(UserBatch.group(world.cols), str(tmp_path / "in"), 9)
    e = cfg.embeddings
    with beam.Pipeline(runner="DirectRunner") as p:
        result = (p | inputs.ReadUserBatches(path)  # pylint: disable=no-value-for-parameter
                  | generate.GenerateEmbeddings(world.loader, e.max_recent, e.aggregation, 4,  # pylint: disable=no-value-for-parameter
                                                world.as_of))
        generate.stage_embeddings(result, staging, sink)
    got = read_staged(staging)
    reader = BigtableEmbeddingStore(bigtable_emulator.client("p").instance("i").table(table_id))
    with pytest.raises(VersionNotCommittedError):  # rows are there, the pointer is not
        reader.lookup(got.user_ids[:2], VERSION)
    n = store_io.write_stores(cfg, staging, str(tmp_path / "store"), VERSION, 1_700_000_000,
                              got.cold, bigtable_attempt=attempt)
    assert n == len(got.user_ids)
    found = reader.lookup(np.concatenate([got.user_ids, [COLD_START_USER]]), VERSION)
    assert found.found.all()
    np.testing.assert_array_equal(found.embeddings[:-1].view(np.uint32), got.embeddings.view(np.uint32))
    np.testing.assert_array_equal(found.embeddings[-1], got.cold)
    meta, _ = reader.lookup_metadata(got.user_ids, VERSION)
    np.testing.assert_array_equal(meta[:, 0], got.support_size)
    np.testing.assert_array_equal(meta[:, 1], got.last_interaction_ts)
    assert (meta[:, 2] == 1_700_000_000).all()
    assert reader.version_info(VERSION)["num_users"] == n + 1
