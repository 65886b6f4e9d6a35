"""Refresh: opening the embedding store and reading every row of the stored version.

:func:`open_store` opens a Parquet or Bigtable store and checks that it answers and exists (a
mistyped path must never regenerate every user into a new store, unless ``create``).
:func:`read_stored_version` reads all rows of the committed version (cold-start row included) as
one columnar :class:`StoredVersion`, the input to the selection of changed users and the rows
carried over. A store that fails or times out is a ``RuntimeError`` naming it; nothing is written.

Used by :mod:`components.meta_embedding_gen.refresh`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Optional

import numpy as np

from components.meta_embedding_gen.refresh_args import StoreSpec
from embeddings.record import COLD_START_USER, VersionNotCommittedError


def _store_error(spec: StoreSpec, err: BaseException) -> RuntimeError:
    return RuntimeError(f"embedding store {spec} is unreachable or failed ({type(err).__name__}: "
                        f"{str(err)[:300]}); nothing was written")


def _check_parquet_store(spec: StoreSpec, store: Any, create: bool) -> None:
    """A Parquet root must be an existing store (a folder with a committed version) unless ``create``.

    With ``create`` a missing or empty folder is accepted too; a folder with other content never is.

    Raises:
        ValueError: names the root and the fix (a typo in the path, or ``--create``).
    """
    root = spec.root
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"Parquet store root {root} exists and is not a folder")
    if os.path.isdir(root) and store.committed_versions():
        return
    if not os.path.exists(root) or not os.listdir(root):
        if create:
            return
        state = "does not exist" if not os.path.exists(root) else "is an empty folder"
        raise ValueError(f"Parquet store {root} {state}, so it holds no embeddings; check the path "
                         "(a typo would regenerate every user into a new store), or pass --create "
                         "to start a new store there")
    raise ValueError(f"{root} is not a Parquet embedding store (no committed model_version=* folder "
                     "in it); check the path, or pass a new or empty folder with --create")


def open_store(spec: StoreSpec, timeout_s: float = 30.0, client: Any = None, create: bool = False):
    """Opens the store and checks it answers and exists (Bigtable: reads the version pointer).

    Args:
        spec: the store.
        timeout_s: Bigtable deadline of each read (retries included).
        client: optional ``google.cloud.bigtable.Client`` (default: one from the environment,
            which honours ``BIGTABLE_EMULATOR_HOST``).
        create: accept a store that does not exist yet (a missing or empty Parquet folder, a
            missing Bigtable table); it is created by the first write.

    Raises:
        RuntimeError: Bigtable does not answer within ``timeout_s`` (named).
        ValueError: the store does not exist and ``create`` is False, or the Parquet root is
            not a folder or holds something else than a store.
    """
    if spec.kind == "parquet":
        from embeddings.parquet_store import ParquetEmbeddingStore

        if os.path.exists(spec.root) and not os.path.isdir(spec.root):
            raise ValueError(f"Parquet store root {spec.root} exists and is not a folder")
        store = ParquetEmbeddingStore(spec.root)
        _check_parquet_store(spec, store, create)
        return store
    from google.api_core import exceptions as gexc

    from embeddings.bigtable_store import BigtableEmbeddingStore

    try:
        store = BigtableEmbeddingStore.open(spec.project, spec.instance, spec.table, client=client,
                                            read_timeout_s=timeout_s, write_timeout_s=max(timeout_s, 120.0),
                                            create_if_missing=create)
        store.committed_versions()
        exists = store.table.exists()
    except (gexc.GoogleAPICallError, gexc.RetryError) as err:
        raise _store_error(spec, err) from err
    if not exists and not create:
        raise ValueError(f"Bigtable table {spec} does not exist, so it holds no embeddings; check "
                         "the project/instance/table (a typo would regenerate every user into a new "
                         "table), or pass --create to create it")
    return store


@dataclasses.dataclass
class StoredVersion:
    """Every row of one committed version, columnar (the cold-start row included).

    Attributes:
        user_ids: [N] object str.
        embeddings: float32 [N, E].
        support_size, last_interaction_ts, generated_at: int64 [N].
    """

    user_ids: np.ndarray
    embeddings: np.ndarray
    support_size: np.ndarray
    last_interaction_ts: np.ndarray
    generated_at: np.ndarray


def _read_parquet_version(store, version: str) -> Optional[StoredVersion]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embeddings.parquet_codec import embedding_column_to_numpy

    try:
        meta = store.version_metadata(version)
    except VersionNotCommittedError:
        return None
    dim = int(meta["embedding_dim"])
    vdir = store.version_dir(version)
    cols = ["user_id", "embedding", "support_size", "last_interaction_ts", "generated_at"]
    tables = [pq.read_table(str(vdir / f), columns=cols) for f in meta["files"]]
    if not tables:
        return None
    tbl = pa.concat_tables(tables)
    return StoredVersion(
        user_ids=np.array(tbl.column("user_id").to_pylist(), dtype=object),
        embeddings=embedding_column_to_numpy(tbl.column("embedding"), dim),
        support_size=tbl.column("support_size").to_numpy().astype(np.int64),
        last_interaction_ts=tbl.column("last_interaction_ts").to_numpy().astype(np.int64),
        generated_at=tbl.column("generated_at").to_numpy().astype(np.int64))


def _read_bigtable_version(store, version: str, timeout_s: float) -> Optional[StoredVersion]:
    """Scans the committed attempt of ``version`` (both families, one read_rows)."""
    from google.cloud.bigtable.row_data import DEFAULT_RETRY_READ_ROWS

    from embeddings import bigtable_layout as bts

    try:
        info = store.version_info(version)
    except VersionNotCommittedError:
        return None
    ts_us, dim = int(info["attempt_ts_us"]), int(info["embedding_dim"])
    q = bts._qualifier(version)  # pylint: disable=protected-access
    rows = store.table.read_rows(
        filter_=bts._version_filter(q, ts_us, f"[{bts.EMB_FAMILY}{bts.META_FAMILY}]"),  # pylint: disable=protected-access
        retry=DEFAULT_RETRY_READ_ROWS.with_deadline(max(timeout_s, 600.0)))
    ids: List[str] = []
    embs: List[bytes] = []
    metas: List[bytes] = []
    for r in rows:
        if r.row_key == bts.POINTER_ROW_KEY:
            continue
        e = [c for c in r.cells.get(bts.EMB_FAMILY, {}).get(q, ()) if c.timestamp_micros == ts_us]
        m = [c for c in r.cells.get(bts.META_FAMILY, {}).get(q, ()) if c.timestamp_micros == ts_us]
        if not e or not m:
            continue
        key = r.row_key.decode("utf-8")
        ids.append(COLD_START_USER if r.row_key == bts.COLD_START_ROW_KEY else key.split("#", 1)[1])
        embs.append(e[0].value)
        metas.append(m[0].value)
    if not ids:
        return None
    blob = b"".join(embs)
    if len(blob) != 4 * dim * len(embs):
        raise ValueError(f"Bigtable {store.table.name}: a stored embedding of version {version!r} "
                         f"is not {dim} float32 values; the table holds foreign data")
    meta = np.frombuffer(b"".join(metas), dtype="<i8").reshape(len(metas), 3)
    return StoredVersion(
        user_ids=np.array(ids, dtype=object),
        embeddings=np.frombuffer(blob, dtype="<f4").reshape(len(embs), dim).astype(np.float32),
        support_size=meta[:, 0].astype(np.int64), last_interaction_ts=meta[:, 1].astype(np.int64),
        generated_at=meta[:, 2].astype(np.int64))


def read_stored_version(store, spec: StoreSpec, version: str, timeout_s: float = 30.0
                        ) -> Optional[StoredVersion]:
    """All rows of the committed ``version`` in ``store``, or None when it is not committed.

    Raises:
        RuntimeError: Bigtable failed or timed out (named).
    """
    if spec.kind == "parquet":
        return _read_parquet_version(store, version)
    from google.api_core import exceptions as gexc

    try:
        return _read_bigtable_version(store, version, timeout_s)
    except (gexc.GoogleAPICallError, gexc.RetryError) as err:
        raise _store_error(spec, err) from err
