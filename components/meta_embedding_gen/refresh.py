"""Refresh: regenerate the meta embeddings of users with new interactions, with a pushed model.

No retraining: the pushed version folder ``<serving_base>/<version>/`` carries the meta block
(``assets.extra/meta_block/``) and a copy of the Transform output
(``assets.extra/meta_block/transform_graph/``); its folder name is the model version, and the
refreshed embeddings are written under that same version (the global block of version v only
ever receives embeddings of version v).

Definition. As of time ``T``, a user **has new interactions** when they have an interaction with
``last_interaction_ts(store) < timestamp <= T``, or when they have an interaction ``<= T`` and no
row in the store's copy of the version. Only those users are fine-tuned (Beam, the same
:func:`generate.GenerateEmbeddings` as MEG) on their last K interactions ``<= T`` (the full log,
not only the new part), encoded raw -> model contract by the pushed ``transform_graph``.

Commit. A new complete copy of the version is written: every other row of the stored version
(the cold-start row included) carried over bit-identical (embedding, support size, last
interaction, generated_at), changed users replaced. Parquet: the store's atomic version write
(temp folder + rename). Bigtable: all rows under a new attempt timestamp, then the version pointer
(readers keep the previous copy until the pointer lands). When no user has new interactions
nothing is written, so a rerun with the same ``T`` changes nothing.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from components.common.model_layout import meta_block_dir
from components.meta_embedding_gen import generate, refresh_entities, store_io
from components.meta_embedding_gen.meta_block import (
    MetaBlockLoader,
    check_meta_block,
    genre_set_arg,
    transform_graph_dir,
)
from embeddings.entity_keys import UserRowCount
from embeddings.record import COLD_START_USER, EmbeddingBatch, VersionNotCommittedError
from limaml.config import LimamlConfig
from schema import features as F

ENCODE_CHUNK_ROWS = 65_536
BATCH_ROWS = 65_536
_BIGTABLE_RE = re.compile(r"^([^/\s]+)/([^/\s]+)/([^/\s]+)$")


# --------------------------------------------------------------------------------- arguments
@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """Where embeddings live: ``parquet:<root>`` or ``bigtable:<project>/<instance>/<table>``.

    Attributes:
        kind: ``"parquet"`` or ``"bigtable"``.
        root: Parquet store root (kind parquet).
        project, instance, table: Bigtable ids (kind bigtable).
    """

    kind: str
    root: Optional[str] = None
    project: Optional[str] = None
    instance: Optional[str] = None
    table: Optional[str] = None

    def __str__(self) -> str:
        if self.kind == "parquet":
            return f"parquet:{self.root}"
        return f"bigtable:{self.project}/{self.instance}/{self.table}"


def parse_store(spec: str) -> StoreSpec:
    """Parses ``parquet:<dir>`` or ``bigtable:<project>/<instance>/<table>``.

    Raises:
        ValueError: any other form (the message shows both accepted forms).
    """
    kind, _, rest = (spec or "").partition(":")
    if kind == "parquet" and rest:
        return StoreSpec("parquet", root=rest)
    if kind == "bigtable":
        m = _BIGTABLE_RE.match(rest)
        if m:
            return StoreSpec("bigtable", project=m.group(1), instance=m.group(2), table=m.group(3))
    raise ValueError(f"store {spec!r} is not understood; use parquet:<dir> or "
                     "bigtable:<project>/<instance>/<table>")


def parse_as_of(text: Any) -> int:
    """Unix seconds from ``"1700000000"`` or an ISO date / date-time.

    A date alone means 00:00:00 UTC of that day; a date-time without a zone is UTC; ``Z`` and
    ``+HH:MM`` offsets are honoured.

    Raises:
        ValueError: neither form (the message names the value and gives examples).
    """
    if isinstance(text, (int, np.integer)):
        return int(text)
    s = str(text).strip()
    if re.fullmatch(r"\d+", s):
        return int(s)
    try:
        when = _dt.datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise ValueError(f"--as-of {text!r} is neither unix seconds nor an ISO date; use e.g. "
                         "1700000000, 2024-01-31 or 2024-01-31T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return int(when.timestamp())


def model_version_of(model_dir: str) -> str:
    """The version of a pushed model: its folder name, an integer string.

    Raises:
        ValueError: the folder name is not an integer (not a pushed version folder).
    """
    name = os.path.basename(os.path.normpath(model_dir))
    if not name.isdigit():
        raise ValueError(f"{model_dir}: a pushed model folder is <serving_base>/<version> with an "
                         f"integer version, got folder name {name!r}")
    return name


def model_config(model_dir: str) -> LimamlConfig:
    """The LimamlConfig the model was trained with (from ``meta_block.json``)."""
    from trainer.export import META_BLOCK_JSON

    with open(os.path.join(meta_block_dir(model_dir), META_BLOCK_JSON)) as f:
        info = json.load(f)
    return LimamlConfig.from_json(json.dumps(info["limaml_config"]))


# --------------------------------------------------------------------------------- stores
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

    from embeddings.parquet_store import embedding_column_to_numpy

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

    from embeddings import bigtable_store as bts

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


# --------------------------------------------------------------------------------- selection
def changed_users(frame: pd.DataFrame, stored: Optional[StoredVersion]) -> np.ndarray:
    """Users of ``frame`` (already cut at as_of) with interactions newer than their stored row.

    Args:
        frame: canonical interactions with ``timestamp <= as_of``.
        stored: the stored version (None: nothing stored, every user is changed).

    Returns:
        Sorted user ids [C] (object).
    """
    newest = frame.groupby(F.USER_ID, sort=True)[F.TIMESTAMP].max()
    users = newest.index.to_numpy().astype(object)
    if stored is None:
        return users
    pos = pd.Index(stored.user_ids).get_indexer(users)
    last = np.where(pos >= 0, stored.last_interaction_ts[np.maximum(pos, 0)], np.iinfo(np.int64).min)
    return users[(pos < 0) | (newest.to_numpy() > last)]


def last_k(frame: pd.DataFrame, users: np.ndarray, k: int) -> pd.DataFrame:
    """The last ``k`` interactions of each of ``users``, sorted by (user, time, item)."""
    sel = frame[frame[F.USER_ID].isin(set(users.tolist()))]
    sel = sel.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable")
    return sel.groupby(F.USER_ID, sort=False).tail(k).reset_index(drop=True)


# --------------------------------------------------------------------------------- encoding
# Raw columns meta-embedding generation reads: the model's features, the user id (task key and
# hashed user-id input), the label (fine-tuning loss) and the timestamp (order, recency). Other
# raw features of the transform's input (rating, oracle_prob, the protocol's cohort and
# history_size) feed nothing the meta block uses; TFT fills them with defaults.
NEEDED_RAW_COLUMNS: Tuple[str, ...] = (F.USER_ID, F.TIMESTAMP, F.LABEL) + F.MODEL_FEATURES


def needed_raw_features(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The entries of a transform's raw feature ``spec`` that refresh feeds (:data:`NEEDED_RAW_COLUMNS`)."""
    return {name: feat for name, feat in spec.items() if name in NEEDED_RAW_COLUMNS}


def check_columns(frame: pd.DataFrame, spec: Dict[str, Any], data_dir: str) -> None:
    """Raises ValueError naming the needed raw columns the prepared data lacks (before any work)."""
    missing = [name for name in needed_raw_features(spec) if name not in frame.columns]
    if missing:
        raise ValueError(f"{data_dir}: the prepared data lacks column(s) {missing} that the model reads "
                         f"(has {list(frame.columns)}); prepare it with limaml data prepare")


def _raw_tensors(frame: pd.DataFrame, spec: Dict[str, Any]) -> Dict[str, Any]:
    import tensorflow as tf

    out: Dict[str, Any] = {}
    n = len(frame)
    for name, feat in needed_raw_features(spec).items():
        if name not in frame.columns:
            raise ValueError(f"the model reads raw column {name!r}, which the prepared "
                             f"data lacks (columns: {list(frame.columns)})")
        col = frame[name].to_numpy()
        if feat.dtype == tf.string:
            values = tf.constant(col.astype(str).astype(object).astype(bytes))
        else:
            values = tf.constant(col.astype(feat.dtype.as_numpy_dtype))
        if isinstance(feat, tf.io.FixedLenFeature):
            shape = list(feat.shape)
            if shape not in ([], [1]):
                raise ValueError(f"raw feature {name!r} has shape {shape}; refresh expects scalars")
            out[name] = values if not shape else tf.reshape(values, [n, 1])
        elif isinstance(feat, tf.io.VarLenFeature):
            out[name] = tf.SparseTensor(
                indices=tf.stack([tf.range(n, dtype=tf.int64), tf.zeros([n], tf.int64)], axis=1),
                values=values, dense_shape=[n, 1])
        else:
            raise ValueError(f"raw feature {name!r} has an unsupported spec {type(feat).__name__}")
    return out


def raw_spec_of(output: Any) -> Dict[str, Any]:
    """The raw feature spec of a ``TFTransformOutput`` (the canonical contract when not copied)."""
    from trainer import preprocessing

    try:
        return output.raw_feature_spec()
    except Exception:  # noqa: BLE001 - raw metadata not copied: the canonical contract
        return preprocessing.raw_feature_spec()


def encode_with_transform(frame: pd.DataFrame, transform_dir: str,
                          chunk_rows: int = ENCODE_CHUNK_ROWS) -> Dict[str, np.ndarray]:
    """Raw canonical rows -> encoded model features with the pushed Transform graph.

    Args:
        frame: canonical interactions ``[N]``.
        transform_dir: a TFT output folder (``TFTransformOutput``).
        chunk_rows: rows transformed per call.

    Returns:
        ``{feature: [N, ...]}`` in the frame's row order; ``user_id`` (object str) and
        ``timestamp`` (int64) are taken from ``frame``.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(transform_dir)
    spec = raw_spec_of(output)
    parts: Dict[str, List[np.ndarray]] = {}
    for lo in range(0, len(frame), chunk_rows):
        chunk = frame.iloc[lo:lo + chunk_rows]
        got = output.transform_raw_features(_raw_tensors(chunk, spec), drop_unused_features=True)
        for name, value in got.items():
            if isinstance(value, tf.SparseTensor):
                value = tf.sparse.to_dense(value)
            elif isinstance(value, tf.RaggedTensor):
                value = value.to_tensor()
            parts.setdefault(name, []).append(value.numpy())
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out[F.USER_ID] = frame[F.USER_ID].astype(str).to_numpy().astype(object)
    out[F.TIMESTAMP] = frame[F.TIMESTAMP].to_numpy().astype(np.int64)
    return out


# --------------------------------------------------------------------------------- refresh
@dataclasses.dataclass(frozen=True)
class RefreshSummary:
    """What a refresh did.

    Attributes:
        model_version: the pushed version refreshed.
        as_of: unix seconds.
        store: the store, as a spec string.
        changed_users: users fine-tuned and replaced (or added).
        carried_users: user rows carried over unchanged.
        users: user rows in the version after the refresh (cold-start row not counted).
        committed: whether a new copy was written (False: nothing had changed).
        seconds: wall time.
    """

    model_version: str
    as_of: int
    store: str
    changed_users: int
    carried_users: int
    users: int
    committed: bool
    seconds: float


def _carried_batches(stored: StoredVersion, keep: np.ndarray, version: str) -> Iterator[EmbeddingBatch]:
    """Kept rows as batches, one ``generated_at`` per batch (so it is carried over too)."""
    idx = np.flatnonzero(keep)
    for gen in np.unique(stored.generated_at[idx]):
        rows = idx[stored.generated_at[idx] == gen]
        for lo in range(0, rows.size, BATCH_ROWS):
            r = rows[lo:lo + BATCH_ROWS]
            yield EmbeddingBatch(user_ids=stored.user_ids[r], embeddings=stored.embeddings[r],
                                 support_size=stored.support_size[r],
                                 last_interaction_ts=stored.last_interaction_ts[r],
                                 model_version=version, generated_at=int(gen))


def generate_embeddings(encoded: Dict[str, np.ndarray], model_dir: str, cfg: LimamlConfig,
                        as_of: int, staging: str, beam_args: Sequence[str] = (),
                        genres: Any = None) -> None:
    """Runs MEG (Beam) on an encoded table with the model of ``model_dir``; stages its output.

    The table goes to ``staging/input/users.parquet`` in row groups of whole users (about
    ``users_per_batch * max_recent`` rows each); Beam reads it back one row group (a
    :class:`UserBatch`) per element, so no per-user element and no ``beam.Create`` of the
    users: workers split the file by row group.

    Args:
        encoded: ``{column: [N, ...]}`` sorted by user then time (:func:`encode_with_transform`).
        model_dir: pushed version folder.
        cfg: the model's config (``embeddings``: max_recent, aggregation, users_per_batch).
        as_of: unix seconds.
        staging: private folder (cleared first).
        beam_args: Beam pipeline flags.
        genres: multi-block models: the genre set (:func:`refresh_entities.genres_for_refresh`).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from components.meta_embedding_gen import inputs
    from components.meta_embedding_gen.user_batch import UserBatch

    e = cfg.embeddings
    store_io.clear_staging(staging)
    input_dir = os.path.join(staging, "input")
    path = inputs.write_grouped_parquet(UserBatch.from_grouped(encoded), input_dir,
                                        max(1, e.users_per_batch * e.max_recent))
    try:
        with beam.Pipeline(options=PipelineOptions(list(beam_args))) as p:
            result = (p
                      | "Users" >> inputs.ReadUserBatches(path)  # pylint: disable=no-value-for-parameter
                      | "MEG" >> generate.GenerateEmbeddings(  # pylint: disable=no-value-for-parameter
                          MetaBlockLoader(model_dir), e.max_recent, e.aggregation, e.users_per_batch, as_of,
                          genres))
            generate.stage_embeddings(result, staging)
    finally:
        shutil.rmtree(input_dir, ignore_errors=True)


def refresh(model_dir: str, data_dir: str, as_of: Any, store: Optional[str] = None,
            beam_args: Sequence[str] = (), timeout_s: float = 30.0, client: Any = None,
            log=print, create: bool = False) -> RefreshSummary:
    """Regenerates, with a pushed model, the embeddings of users with new interactions.

    Args:
        model_dir: pushed version folder ``<serving_base>/<version>`` (integer folder name).
        data_dir: prepared data folder (``limaml data prepare`` output, canonical Parquet).
        as_of: unix seconds or ISO date; interactions after it are ignored.
        store: ``parquet:<dir>`` or ``bigtable:<project>/<instance>/<table>``; default: the
            Bigtable table of the model's config, if it names one.
        beam_args: Beam pipeline flags for the generation (default DirectRunner).
        timeout_s: Bigtable read deadline.
        client: optional Bigtable client (tests).
        log: progress printer (``None``: silent).
        create: the store may not exist yet (a new Parquet folder or Bigtable table); without
            it a missing store is an error, so a mistyped path never regenerates every user.

    Returns:
        A :class:`RefreshSummary`.

    Raises:
        FileNotFoundError: model folder, meta block, transform graph or data missing (named).
        ValueError: bad ``as_of``, store spec or model folder name; the store does not exist
            (without ``create``); the data lacks a column the model reads.
        RuntimeError: the store is unreachable or failed; nothing is committed then.
    """
    t0 = time.perf_counter()
    say = log or (lambda *_: None)
    as_of = parse_as_of(as_of)
    version = model_version_of(model_dir)
    check_meta_block(model_dir)
    tdir = transform_graph_dir(model_dir)
    if not os.path.isdir(tdir):
        raise FileNotFoundError(f"{model_dir} has no transform graph ({tdir} is missing); the "
                                "trainer copies the Transform output there when it exports the model")
    cfg = model_config(model_dir)
    if store is None:
        e = cfg.embeddings
        if not e.bigtable_table:
            raise ValueError("no store given and the model's config names no Bigtable table; pass "
                             "--store parquet:<dir> or --store bigtable:<project>/<instance>/<table>")
        store = f"bigtable:{e.bigtable_project}/{e.bigtable_instance}/{e.bigtable_table}"
    spec = parse_store(store)
    import tensorflow_transform as tft

    from limaml.data import canonical

    frame = canonical.read_prepared(data_dir)
    check_columns(frame, raw_spec_of(tft.TFTransformOutput(tdir)), data_dir)
    target = open_store(spec, timeout_s, client, create=create)
    stored = read_stored_version(target, spec, version, timeout_s)
    frame = frame[frame[F.TIMESTAMP] <= as_of]
    changed = changed_users(frame, stored)
    stored_users = 0 if stored is None else int((stored.user_ids != COLD_START_USER).sum())
    say(f"[refresh] version {version}, as of {as_of}: {len(changed)} of "
        f"{frame[F.USER_ID].nunique()} users have new interactions; {stored_users} stored rows")
    if len(changed) == 0:
        return RefreshSummary(version, as_of, str(spec), 0, stored_users, stored_users, False,
                              time.perf_counter() - t0)
    support = last_k(frame, changed, cfg.embeddings.max_recent)
    encoded = encode_with_transform(support, tdir)
    staging = tempfile.mkdtemp(prefix="limaml-refresh-")
    try:
        stored_keys = None if stored is None else stored.user_ids
        genres = refresh_entities.genres_for_refresh(genre_set_arg(model_dir) is not None, stored_keys)
        generate_embeddings(encoded, model_dir, cfg, as_of, staging, beam_args, genres)
        new_cold = store_io.load_cold(os.path.join(staging, generate.COLD_FILE))
        generated_at = generate.now()
        keep = None
        cold_batches: List[EmbeddingBatch] = []
        if stored is not None:
            is_cold = stored.user_ids == COLD_START_USER
            keep = refresh_entities.carried(stored.user_ids, changed)
            if not is_cold.any():
                cold_batches = [EmbeddingBatch.cold_start(new_cold, version, generated_at)]
        else:
            cold_batches = [EmbeddingBatch.cold_start(new_cold, version, generated_at)]

        def stream() -> Iterator[EmbeddingBatch]:
            yield from cold_batches
            if stored is not None:
                yield from _carried_batches(stored, keep, version)
            yield from refresh_entities.without_cold_genre_rows(
                store_io.staged_batches(staging, version, generated_at, None),
                refresh_entities.stored_genres(stored_keys) is not None)

        counted = UserRowCount()
        try:
            target.write(counted.through(stream()))
        except Exception as err:  # noqa: BLE001 - store failures are named, nothing committed
            if spec.kind == "bigtable" and not isinstance(err, ValueError):
                raise _store_error(spec, err) from err
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    users = counted.users  # user rows (not the user x genre or cold-start rows)
    carried = users - len(changed)
    say(f"[refresh] committed version {version} to {spec}: {len(changed)} users refreshed, "
        f"{carried} carried over")
    return RefreshSummary(version, as_of, str(spec), int(len(changed)), carried, users, True,
                          time.perf_counter() - t0)
