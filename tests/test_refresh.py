"""``limaml refresh`` (components/meta_embedding_gen/refresh.py) on a pushed model folder.

Setup: synthetic canonical data written as a prepared data folder; a real tft_beam
AnalyzeAndTransformDataset run with ``trainer.preprocessing.preprocessing_fn``, shaped like the
pipeline's Transform: its raw schema is the curated ``schema/schema.pbtxt`` (every feature a
VarLen, ``oracle_prob``, ``cohort`` and ``history_size`` included) and its input rows are
ProtocolExampleGen's (query rows carry ``cohort`` and ``history_size``, trainable rows do not),
so refresh must not ask the new data for columns only the pipeline adds; a LimamlModel at
its seeded initialisation (vocabulary sizes from that transform) exported as a pushed version
``<base>/7/`` with ``assets.extra/meta_block/`` and its ``transform_graph/`` copy. Expected
embeddings: the fine-tune API on each user's last K interactions <= as_of, selected with pandas
and encoded by the tft_beam run's own output (not by refresh's encoder).
"""
from __future__ import annotations

import json
import os
import shutil
import types
import uuid

import numpy as np
import pandas as pd
import pytest

from components.common.model_layout import meta_block_dir
from components.meta_embedding_gen import generate, refresh
from components.meta_embedding_gen.meta_block import transform_graph_dir
from embeddings.record import COLD_START_USER
from schema import features as F
from tests.test_meta_embedding_gen import K, expected_embeddings, small_config, sorted_frame
from trainer.layout import USER_HASH, build_layout
from trainer.model import LimamlModel

VERSION = "7"


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from limaml.data import canonical
    from trainer import export, preprocessing

    root = str(tmp_path_factory.mktemp("refresh"))
    cfg = small_config()
    frame = sorted_frame(num_users=30, seed=2)
    data_dir = os.path.join(root, "data")
    canonical.write_prepared(frame, data_dir, {"dataset": "synthetic"})
    # Real Transform run (its output doubles as the expected encoding), on the pipeline's raw
    # schema and ProtocolExampleGen-shaped rows: each user's last row is a query row (cohort,
    # history_size), the others are trainable rows without them.
    meta = dataset_metadata.DatasetMetadata(_pipeline_schema())
    raw_spec = schema_utils.schema_as_feature_spec(meta.schema).feature_spec
    assert {F.ORACLE_PROB, F.COHORT, F.HISTORY_SIZE} <= set(raw_spec)
    last = ~frame[F.USER_ID].duplicated(keep="last").to_numpy()
    raw = []
    for i, r in enumerate(frame.to_dict("records")):
        row = {k: [r[k].encode() if isinstance(r[k], str) else r[k]] for k in raw_spec if k in r}
        row[F.COHORT] = [b"1-4"] if last[i] else []
        row[F.HISTORY_SIZE] = [3] if last[i] else []
        raw.append(row)
    tdir = os.path.join(root, "transform")
    with tft_beam.Context(temp_dir=os.path.join(root, "tft-tmp")):
        (transformed, _), transform_fn = ((raw, meta) | tft_beam.AnalyzeAndTransformDataset(
            lambda x: preprocessing.preprocessing_fn(x, {"limaml_config": cfg.to_json()})))
        _ = transform_fn | tft_beam.WriteTransformFn(tdir)
    metadata_io.write_metadata(meta, os.path.join(tdir, tft.TFTransformOutput.RAW_METADATA_DIR))
    encoded = {k: np.stack([np.asarray(t[k]) for t in transformed]) for k in transformed[0]}
    encoded[F.USER_ID] = np.array([u.decode() for u in encoded[F.USER_ID]], dtype=object)
    # The in-memory run keeps the input order: check it before relying on it.
    np.testing.assert_array_equal(encoded[F.USER_ID], frame[F.USER_ID].to_numpy())
    np.testing.assert_array_equal(encoded[F.TIMESTAMP], frame[F.TIMESTAMP].to_numpy())
    out = tft.TFTransformOutput(tdir)
    sizes = {e.name: out.vocabulary_size_by_name(e.name) + 1
             for e in F.ENCODINGS if e.kind == "categorical"}
    model = LimamlModel(build_layout(cfg.model, sizes), cfg.model, cfg.maml, seed=0)
    folder = os.path.join(root, "serving", VERSION)
    export.export_meta_block(meta_block_dir(folder), model, cfg, VERSION)
    shutil.copytree(tdir, transform_graph_dir(folder))
    ts = frame[F.TIMESTAMP]
    return types.SimpleNamespace(root=root, cfg=cfg, frame=frame, encoded=encoded, model=model,
                                 folder=folder, data_dir=data_dir,
                                 as_of1=int(ts.quantile(0.5)), as_of2=int(ts.quantile(0.7)))


def _pipeline_schema():
    """The curated raw schema the pipeline's ImportSchemaGen hands to Transform."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with open(F.schema_path()) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


def _parquet_rows(root: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    vdir = os.path.join(root, f"model_version={VERSION}")
    meta = json.load(open(os.path.join(vdir, "_metadata.json")))
    tbl = pd.concat([pq.read_table(os.path.join(vdir, f)).to_pandas() for f in meta["files"]])
    tbl["bits"] = [np.asarray(e, np.float32).tobytes() for e in tbl["embedding"]]
    return tbl.set_index("user_id").sort_index()


def _new_users(frame: pd.DataFrame, lo: int, hi: int) -> set:
    ts = frame[F.TIMESTAMP]
    return set(frame.loc[(ts > lo) & (ts <= hi), F.USER_ID])


def _check_against_api(p, rows: pd.DataFrame, users, as_of: int) -> None:
    ids, emb, sizes, last = expected_embeddings(p.model, p.frame, p.encoded, K, "mean",
                                                as_of=as_of, users=sorted(users))
    got = rows.loc[list(ids)]
    np.testing.assert_allclose(np.stack(got["embedding"].to_numpy()), emb, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(got["support_size"].to_numpy(), sizes)
    np.testing.assert_array_equal(got["last_interaction_ts"].to_numpy(), last)


def test_refresh_parquet_changes_exactly_users_with_new_interactions(pushed, tmp_path, monkeypatch):
    p = pushed
    store = f"parquet:{tmp_path / 'store'}"
    monkeypatch.setattr(generate, "now", lambda: 1_000)
    first = refresh.refresh(p.folder, p.data_dir, p.as_of1, store, log=None, create=True)
    users1 = set(p.frame.loc[p.frame[F.TIMESTAMP] <= p.as_of1, F.USER_ID])
    assert first.committed and first.model_version == VERSION and first.changed_users == len(users1)
    before = _parquet_rows(str(tmp_path / "store"))
    assert set(before.index) == users1 | {COLD_START_USER}
    _check_against_api(p, before, users1, p.as_of1)

    monkeypatch.setattr(generate, "now", lambda: 2_000)
    second = refresh.refresh(p.folder, p.data_dir, p.as_of2, store, log=None)
    changed = _new_users(p.frame, p.as_of1, p.as_of2)
    users2 = set(p.frame.loc[p.frame[F.TIMESTAMP] <= p.as_of2, F.USER_ID])
    assert changed and users1 - changed  # both kinds exist
    assert second.committed and second.changed_users == len(changed)
    assert second.users == len(users2) and second.carried_users == len(users2) - len(changed)
    after = _parquet_rows(str(tmp_path / "store"))
    assert set(after.index) == users2 | {COLD_START_USER}
    same = sorted((users1 - changed) | {COLD_START_USER})
    for col in ("bits", "support_size", "last_interaction_ts", "generated_at"):
        assert after.loc[same, col].tolist() == before.loc[same, col].tolist(), col
    assert (after.loc[sorted(changed), "generated_at"] == 2_000).all()
    assert (after.loc[sorted(changed), "bits"] != before.reindex(sorted(changed))["bits"]).all()
    _check_against_api(p, after, changed, p.as_of2)

    # Rerun with the same as_of: nothing to do, nothing written.
    stamp = json.load(open(tmp_path / "store" / f"model_version={VERSION}" / "_metadata.json"))
    again = refresh.refresh(p.folder, p.data_dir, p.as_of2, store, log=None)
    assert not again.committed and again.changed_users == 0
    assert json.load(open(tmp_path / "store" / f"model_version={VERSION}" / "_metadata.json")) == stamp


def test_refresh_bigtable_rows_then_pointer(pushed, bigtable_emulator, monkeypatch):
    from embeddings.bigtable_store import BigtableEmbeddingStore

    p = pushed
    table = f"refresh-{uuid.uuid4().hex[:6]}"
    client = bigtable_emulator.client("proj")
    store = f"bigtable:proj/inst/{table}"
    refresh.refresh(p.folder, p.data_dir, p.as_of1, store, client=client, log=None, create=True)
    bt = BigtableEmbeddingStore(client.instance("inst").table(table), pointer_ttl_s=0.0)
    users = np.array(sorted(set(p.frame[F.USER_ID])) + [COLD_START_USER], dtype=object)
    before, meta_before = bt.lookup(users, VERSION), bt.lookup_metadata(users, VERSION)[0]
    attempt1 = bt.version_info(VERSION)["attempt_ts_us"]
    second = refresh.refresh(p.folder, p.data_dir, p.as_of2, store, client=client, log=None)
    changed = _new_users(p.frame, p.as_of1, p.as_of2)
    assert second.committed and second.changed_users == len(changed)
    after, meta_after = bt.lookup(users, VERSION), bt.lookup_metadata(users, VERSION)[0]
    is_changed = np.isin(users, sorted(changed))
    keep = before.found & ~is_changed
    assert keep.sum() > 1 and after.found[is_changed].all()
    np.testing.assert_array_equal(after.embeddings[keep].view(np.uint32),
                                  before.embeddings[keep].view(np.uint32))
    np.testing.assert_array_equal(meta_after[keep], meta_before[keep])
    ids, emb, _, _ = expected_embeddings(p.model, p.frame, p.encoded, K, "mean", as_of=p.as_of2,
                                         users=sorted(changed))
    np.testing.assert_allclose(after.embeddings[np.isin(users, ids)], emb, atol=1e-6, rtol=1e-6)
    attempt2 = bt.version_info(VERSION)["attempt_ts_us"]
    assert attempt2 > attempt1
    again = refresh.refresh(p.folder, p.data_dir, p.as_of2, store, client=client, log=None)
    assert not again.committed and bt.version_info(VERSION)["attempt_ts_us"] == attempt2


def test_cli_rerun_and_errors_name_the_problem(pushed, tmp_path, capsys):
    from limaml.cli import main

    p = pushed
    store = f"parquet:{tmp_path / 'store'}"
    assert main(["refresh", "--model", p.folder, "--data", p.data_dir, "--as-of", str(p.as_of1),
                 "--store", store, "--create"]) == 0
    assert main(["refresh", "--model", p.folder, "--data", p.data_dir, "--as-of",
                 pd.Timestamp(p.as_of1, unit="s").isoformat() + "Z", "--store", store]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert out[0]["committed"] and not out[1]["committed"] and out[1]["changed_users"] == 0

    def err(*args) -> str:
        assert main(["refresh", "--data", p.data_dir, "--store", store, *args]) == 2
        return capsys.readouterr().err

    assert "neither unix seconds nor an ISO date" in err("--model", p.folder, "--as-of", "last tuesday")
    assert "does not exist" in err("--model", str(tmp_path / "nope" / "3"), "--as-of", "0")
    empty = tmp_path / "serving" / "5"
    empty.mkdir(parents=True)
    assert "no meta block" in err("--model", str(empty), "--as-of", "0")
    assert "integer version" in err("--model", str(tmp_path), "--as-of", "0")
    assert "not understood" in err("--model", p.folder, "--as-of", "0", "--store", "redis:x")
    assert not (tmp_path / "store" / ".tmp").exists()


def test_store_down_is_named_and_nothing_written(pushed, monkeypatch):
    from embeddings.emulator import free_port

    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    with pytest.raises(RuntimeError, match="unreachable or failed"):
        refresh.refresh(pushed.folder, pushed.data_dir, pushed.as_of1, "bigtable:p/i/t",
                        timeout_s=1.0, log=None)


def test_missing_transform_graph_is_named(pushed, tmp_path):
    folder = tmp_path / "8"
    shutil.copytree(meta_block_dir(pushed.folder), meta_block_dir(str(folder)),
                    ignore=shutil.ignore_patterns("transform_graph"))
    with pytest.raises(FileNotFoundError, match="no transform graph"):
        refresh.refresh(str(folder), pushed.data_dir, pushed.as_of1, f"parquet:{tmp_path}/s", log=None)


def test_encoding_takes_non_ascii_strings(pushed):
    """A user id outside ASCII is encoded as UTF-8 (numpy's str -> bytes cast raised here);
    every other feature is unchanged, the user's hash is one new value for all their rows."""
    from components.meta_embedding_gen import refresh_encoding

    frame = pushed.frame.copy()
    first = frame[F.USER_ID].iloc[0]
    frame[F.USER_ID] = frame[F.USER_ID].replace(first, "usér-ü")
    got = refresh_encoding.encode_with_transform(frame, transform_graph_dir(pushed.folder))
    rows = (frame[F.USER_ID] == "usér-ü").to_numpy()
    assert rows.sum() > 1 and set(got[F.USER_ID][rows]) == {"usér-ü"}
    for k, v in pushed.encoded.items():
        if k in got and k not in (F.USER_ID, USER_HASH):
            np.testing.assert_array_equal(got[k], v, err_msg=k)
    np.testing.assert_array_equal(got[USER_HASH][~rows], pushed.encoded[USER_HASH][~rows])
    assert len(set(got[USER_HASH][rows])) == 1
    assert got[USER_HASH][rows][0] != pushed.encoded[USER_HASH][rows][0]


def test_as_of_parsing():
    assert refresh.parse_as_of("1700000000") == 1_700_000_000
    assert refresh.parse_as_of("2024-01-31") == 1_706_659_200
    assert refresh.parse_as_of("2024-01-31T01:00:00Z") == 1_706_662_800
    assert refresh.parse_as_of("2024-01-31T02:00:00+01:00") == 1_706_662_800
    with pytest.raises(ValueError, match="ISO date"):
        refresh.parse_as_of("31/01/2024")


# --- the pipeline's own data and mistyped stores (issue 12, finding 5) -------------------------
def test_refresh_reads_only_the_columns_the_model_needs(pushed, tmp_path):
    """Data with neither the pipeline's protocol columns (cohort, history_size) nor the optional
    oracle_prob nor rating, as production logs would be: refreshed as the fine-tune API says."""
    from limaml.data import canonical

    p = pushed
    data_dir = str(tmp_path / "logs")
    canonical.write_prepared(p.frame.drop(columns=[F.ORACLE_PROB, F.RATING]), data_dir, {"dataset": "logs"})
    assert not {F.ORACLE_PROB, F.RATING, F.COHORT, F.HISTORY_SIZE} & set(canonical.read_prepared(data_dir))
    root = tmp_path / "store"
    got = refresh.refresh(p.folder, data_dir, p.as_of1, f"parquet:{root}", log=None, create=True)
    users1 = set(p.frame.loc[p.frame[F.TIMESTAMP] <= p.as_of1, F.USER_ID])
    assert got.committed and got.changed_users == len(users1)
    _check_against_api(p, _parquet_rows(str(root)), users1, p.as_of1)


def test_missing_model_column_is_named_before_any_write(pushed, tmp_path):
    from limaml.data import canonical

    p = pushed
    data_dir = str(tmp_path / "no-genres")
    canonical.write_prepared(p.frame.drop(columns=[F.GENRES]), data_dir, {"dataset": "x"})
    root = tmp_path / "store"
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['genres'\] that the model reads"):
        refresh.refresh(p.folder, data_dir, p.as_of1, f"parquet:{root}", log=None, create=True)
    assert not root.exists()


def test_mistyped_parquet_store_is_refused_without_create(pushed, tmp_path, capsys):
    from limaml.cli import main

    p = pushed
    real = tmp_path / "store"
    refresh.refresh(p.folder, p.data_dir, p.as_of1, f"parquet:{real}", log=None, create=True)
    stamp = (real / f"model_version={VERSION}" / "_metadata.json").read_bytes()
    typo = tmp_path / "stroe"
    base = ["refresh", "--model", p.folder, "--data", p.data_dir, "--as-of", str(p.as_of2)]
    assert main(base + ["--store", f"parquet:{typo}"]) == 2
    err = capsys.readouterr().err
    assert f"Parquet store {typo} does not exist" in err and "--create" in err
    assert not typo.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(base + ["--store", f"parquet:{empty}"]) == 2
    assert f"Parquet store {empty} is an empty folder" in capsys.readouterr().err
    assert os.listdir(empty) == []
    # A folder with other content is never a store, even with --create.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    assert main(base + ["--store", f"parquet:{foreign}", "--create"]) == 2
    assert f"{foreign} is not a Parquet embedding store" in capsys.readouterr().err
    assert os.listdir(foreign) == ["notes.txt"]
    # The real store, without --create, still refreshes.
    assert main(base + ["--store", f"parquet:{real}"]) == 0
    assert (real / f"model_version={VERSION}" / "_metadata.json").read_bytes() != stamp


def test_missing_bigtable_table_is_refused_without_create(pushed, bigtable_emulator):
    p = pushed
    table = f"typo-{uuid.uuid4().hex[:6]}"
    client = bigtable_emulator.client("proj")
    with pytest.raises(ValueError, match=f"Bigtable table bigtable:proj/inst/{table} does not exist"):
        refresh.refresh(p.folder, p.data_dir, p.as_of1, f"bigtable:proj/inst/{table}", client=client, log=None)
    assert not client.instance("inst").table(table).exists()
