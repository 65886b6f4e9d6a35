"""Refresh of a multi-block model's store: a changed user gets all its rows regenerated (user and
user × genre, on the stored version's genre set), every other row (other users' genre rows, the
cold-start rows ``__cold_start__#g``) is carried over bit-identical, and no key is written twice.

Setup: the real-Transform pushed folder of tests/test_refresh.py, plus a multi-block model on the
same layout pushed as version 8.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pandas as pd

from components.common.model_layout import meta_block_dir
from components.meta_embedding_gen import generate, refresh
from components.meta_embedding_gen.meta_block import transform_graph_dir
from embeddings.record import COLD_START_USER
from schema import features as F
from tests.test_refresh import pushed  # noqa: F401 (fixture)
from trainer import export
from trainer.model import LimamlModel

VERSION = "8"


def _rows(root: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    vdir = os.path.join(root, f"model_version={VERSION}")
    meta = json.load(open(os.path.join(vdir, "_metadata.json")))
    tbl = pd.concat([pq.read_table(os.path.join(vdir, f)).to_pandas() for f in meta["files"]])
    assert not tbl["user_id"].duplicated().any()
    tbl["bits"] = [np.asarray(e, np.float32).tobytes() for e in tbl["embedding"]]
    return tbl.set_index("user_id").sort_index()


def test_multi_block_refresh_regenerates_all_rows_of_changed_users_only(pushed, tmp_path, monkeypatch):  # noqa: F811
    p = pushed
    cfg = dataclasses.replace(p.cfg, model=dataclasses.replace(p.cfg.model,
                                                               meta_blocks=("user", "user_x_genre")))
    model = LimamlModel(p.model.layout, cfg.model, cfg.maml, seed=1)
    folder = os.path.join(os.path.dirname(p.folder), VERSION)
    export.export_meta_block(meta_block_dir(folder), model, cfg, VERSION)
    shutil.copytree(transform_graph_dir(p.folder), transform_graph_dir(folder))
    store = f"parquet:{tmp_path / 'store'}"
    primary = np.argmax(p.encoded[F.GENRES], axis=1)

    monkeypatch.setattr(generate, "now", lambda: 1_000)
    first = refresh.refresh(folder, p.data_dir, p.as_of1, store, log=None, create=True)
    assert first.committed
    before = _rows(str(tmp_path / "store"))
    users1 = set(p.frame.loc[p.frame[F.TIMESTAMP] <= p.as_of1, F.USER_ID])
    # the catalogue of the first refresh: primary genres of every user's last K rows <= as_of1
    sel = p.frame[p.frame[F.TIMESTAMP] <= p.as_of1].groupby(F.USER_ID).tail(5).index.to_numpy()
    genres = sorted(set(primary[sel].tolist()))
    want = users1 | {f"{u}#{g}" for u in users1 for g in genres}
    want |= {COLD_START_USER} | {f"{COLD_START_USER}#{g}" for g in genres}
    assert set(before.index) == want

    monkeypatch.setattr(generate, "now", lambda: 2_000)
    second = refresh.refresh(folder, p.data_dir, p.as_of2, store, log=None)
    assert second.committed
    after = _rows(str(tmp_path / "store"))
    ts = p.frame[F.TIMESTAMP]
    changed = set(p.frame.loc[(ts > p.as_of1) & (ts <= p.as_of2), F.USER_ID])
    users2 = set(p.frame.loc[ts <= p.as_of2, F.USER_ID])
    assert changed and users1 - changed
    assert second.users == len(users2) and second.carried_users == len(users2) - len(changed)
    want2 = users2 | {f"{u}#{g}" for u in users2 for g in genres}  # the stored genre set kept
    want2 |= {COLD_START_USER} | {f"{COLD_START_USER}#{g}" for g in genres}
    assert set(after.index) == want2
    same = sorted(k for k in before.index if k.partition("#")[0] not in changed)
    assert any("#" in k and not k.startswith(COLD_START_USER) for k in same)
    for col in ("bits", "support_size", "generated_at"):
        assert after.loc[same, col].tolist() == before.loc[same, col].tolist(), col
    regenerated = sorted(k for k in after.index if k.partition("#")[0] in changed)
    assert len(regenerated) == len(changed) * (1 + len(genres))
    assert (after.loc[regenerated, "generated_at"] == 2_000).all()
