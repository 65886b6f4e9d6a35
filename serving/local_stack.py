"""The local serving stack of a pipeline run, in one call (``limaml serve``, tests, benchmarks).

``start_local_stack(run_dir)`` assembles, from the folder a ``limaml run --output DIR`` wrote:

1. **Model server** on ``<run>/serving/limaml`` (the pipeline's TF Serving base; model name =
   the folder name, ``limaml``): the real ``tensorflow_model_server`` when it is on PATH, else
   the in-process TF Serving-compatible stand-in (:mod:`serving.model_server`). It serves the
   highest pushed version and picks up new pushes (file-system polling, as TF Serving does).
2. **Embedding store** of the run: the ``limaml.MetaEmbeddings`` artifacts that meta-embedding
   generation (MEG) recorded in the run's ML Metadata (``<run>/metadata.sqlite``), each a
   Parquet store root. ``store="parquet"`` reads them directly, resolving each model version to
   the newest artifact that committed it. ``store="bigtable"`` starts the Bigtable emulator
   (``cbtemulator``; or uses one at ``bigtable_emulator_host``) and loads the served version's
   embeddings into it with the Bigtable store's own ``write`` (same row keys, cells and commit
   pointer as production), then serves from Bigtable.
3. **Embedding lookup** (:class:`serving.embedding_lookup.EmbeddingLookup`: batched, cached,
   timeout, cold-start fallback) warmed up for the served version. A multi-block version
   (``meta_blocks`` in its ``meta_block.json``) is ranked with ``[e_user, e_user×genre]`` per
   candidate (:mod:`serving.multi_block`).
4. **Ranker** (:class:`serving.ranker.Ranker`, real gRPC to the model server) and its **HTTP
   service** (:mod:`serving.ranker_service`: ``POST /v1/rank``, ``GET /healthz``,
   ``GET /readyz``).

Start-up fails with :class:`StackError` (a ``RuntimeError``) naming what to run when the folder
holds no run, the run pushed no model, or the version that would be served has no committed
embeddings. Nothing is left running when start-up fails.

While serving, if a version is pushed for which no embeddings were committed (a push without
meta-embedding generation for it), ``POST /v1/rank`` answers **503** with
``{"error": "embedding lookup for user ... at model version N failed:
VersionNotCommittedError: model version 'N' is not committed ... run meta-embedding generation
..."}``; the service keeps serving ``/healthz`` and ``/readyz`` and ranks again as soon as the
model server serves a version with embeddings (or MEG commits them). The ranker never sends a
version's global block an embedding made by another version.

Example::

    stack = start_local_stack("/tmp/run1")
    print(stack.model_target, stack.ranker_url)   # 127.0.0.1:<port>, http://127.0.0.1:<port>
    ...
    stack.stop()
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from components.artifacts.names import META_EMBEDDINGS_TYPE as MEG_ARTIFACT_TYPE
from components.artifacts.names import MODEL_VERSION_PROPERTY
from embeddings.record import StoreLookup, VersionNotCommittedError
from pipeline import run_metadata
from pipeline.run_metadata import METADATA_FILE
from pipeline.settings import EMBEDDING_JOIN

log = logging.getLogger(__name__)

SERVING_SUBDIR = os.path.join("serving", "limaml")
EVAL_EXAMPLES_NODE = EMBEDDING_JOIN  # examples of a run that got past validation and training
EXAMPLE_GEN_NODE = "ProtocolExampleGen"  # every item of the run (train and eval splits)
STORES = ("parquet", "bigtable")

BIGTABLE_PROJECT = "limaml-local"
BIGTABLE_INSTANCE = "limaml"
BIGTABLE_TABLE = "meta_embeddings"

_RUN_HINT = "run the pipeline first: `limaml run --output DIR`, then pass that DIR"


class StackError(RuntimeError):
    """The local stack cannot start; the message says what is missing and what to run."""


# --------------------------------------------------------------------------- the run folder


@dataclass(frozen=True)
class RunFolder:
    """Where a local pipeline run keeps what serving needs.

    Attributes:
        run_dir: the ``--output`` folder of ``limaml run`` (absolute).
        metadata_path: its SQLite ML Metadata file.
        serving_base: TF Serving model base the pipeline pushes blessed models to.
    """

    run_dir: str
    metadata_path: str
    serving_base: str


def resolve_run(run_dir: str, model_base_dir: Optional[str] = None) -> RunFolder:
    """Checks that ``run_dir`` holds a pipeline run and returns its paths.

    Args:
        run_dir: the ``--output`` folder of ``limaml run``.
        model_base_dir: serve this TF Serving base instead of ``<run>/serving/limaml``.

    Raises:
        StackError: no such folder, or no ML Metadata in it (no run).
    """
    run_dir = os.path.abspath(run_dir)
    if not os.path.isdir(run_dir):
        raise StackError(f"run folder {run_dir} does not exist; {_RUN_HINT}")
    metadata_path = os.path.join(run_dir, METADATA_FILE)
    if not os.path.isfile(metadata_path):
        raise StackError(f"no pipeline run in {run_dir} ({METADATA_FILE} is missing); {_RUN_HINT}")
    base = os.path.abspath(model_base_dir) if model_base_dir else os.path.join(run_dir, SERVING_SUBDIR)
    return RunFolder(run_dir, metadata_path, base)


def pushed_versions(serving_base: str) -> List[int]:
    """Integer version folders under ``serving_base`` holding a complete SavedModel, ascending."""
    if not os.path.isdir(serving_base):
        return []
    out = []
    for name in os.listdir(serving_base):
        if name.isdigit() and os.path.isfile(os.path.join(serving_base, name, "saved_model.pb")):
            out.append(int(name))
    return sorted(out)


def _no_model_message(folder: RunFolder) -> str:
    return (f"no pushed model under {folder.serving_base} (expected <version>/saved_model.pb). "
            "The pipeline's BlockPusher pushes only a blessed LiMAML model: check the run "
            f"finished and the model was blessed ({os.path.join(folder.run_dir, 'report', 'index.html')}),"
            " or rerun `limaml run --output DIR`")


@dataclass(frozen=True)
class EmbeddingArtifact:
    """One ``limaml.MetaEmbeddings`` artifact of a run (a Parquet store root)."""

    id: int
    uri: str
    model_version: Optional[str]


def _read_artifacts(metadata_path: str, type_name: str) -> list:
    """Artifacts of a type, newest first; a store that cannot be read is a named StackError."""
    try:
        return run_metadata.artifacts_by_type(metadata_path, type_name)
    except run_metadata.MetadataReadError as exc:
        raise StackError(str(exc)) from exc


def embedding_artifacts(metadata_path: str) -> List[EmbeddingArtifact]:
    """The run's meta-embedding artifacts, newest first (empty if MEG never ran).

    Raises:
        StackError: the run's ML Metadata cannot be read (locked by a writer through every
            retry, damaged, ...); the message names the file, the cause and what to do.
    """
    out = []
    for a in _read_artifacts(metadata_path, MEG_ARTIFACT_TYPE):
        prop = a.custom_properties.get(MODEL_VERSION_PROPERTY)
        version = prop.string_value if prop is not None and prop.string_value else None
        out.append(EmbeddingArtifact(a.id, a.uri, version))
    return out


def eval_examples_uri(metadata_path: str) -> str:
    """URI of the newest evaluation examples of a complete run (``EmbeddingJoin``'s output).

    Raises:
        StackError: the run has none, or its ML Metadata cannot be read (named).
    """
    arts = _read_artifacts(metadata_path, "Examples")
    mine = [a for a in arts if f"{os.sep}{EVAL_EXAMPLES_NODE}{os.sep}" in a.uri]
    if not mine:
        raise StackError(f"no {EVAL_EXAMPLES_NODE} examples recorded in {metadata_path}; {_RUN_HINT}")
    return mine[0].uri


def item_examples_uris(metadata_path: str) -> List[str]:
    """URIs of a run's ``ProtocolExampleGen`` examples, newest first (empty if there are none)."""
    try:
        arts = _read_artifacts(metadata_path, "Examples")
    except StackError as exc:
        log.warning("no item cache: %s", exc)
        return []
    mine = [a for a in arts if f"{os.sep}{EXAMPLE_GEN_NODE}{os.sep}" in a.uri]
    return [a.uri for a in sorted(mine, key=lambda a: a.id, reverse=True)]


def run_item_cache(metadata_path: str) -> Any:
    """The item cache of a run: the items of its newest ExampleGen output whose rows carry every
    item feature (None if there is none). A newer output without them (e.g. a run the anomaly
    gate stopped because a feature was missing) is skipped, with a log line."""
    from serving.item_cache import ItemCache

    for uri in item_examples_uris(metadata_path):
        try:
            cache = ItemCache.from_examples(uri)
        except FileNotFoundError:
            continue
        if len(cache):
            return cache
        log.warning("item cache: %s has no row with every item feature; trying an older output", uri)
    return None


# --------------------------------------------------------------------------- embedding stores


class RunEmbeddingStore:
    """The Parquet meta embeddings of a run, each version read from the artifact that has it.

    A model version is resolved to the newest ``limaml.MetaEmbeddings`` artifact whose store
    has committed it; unknown versions are looked up again in ML Metadata (at most every
    ``recheck_s``), so versions pushed while serving are found once MEG committed them.

    Args:
        metadata_path: the run's SQLite ML Metadata file.
        recheck_s: least seconds between two ML Metadata scans for an unknown version.
    """

    def __init__(self, metadata_path: str, recheck_s: float = 2.0) -> None:
        self.metadata_path = metadata_path
        self.recheck_s = float(recheck_s)
        self._stores: Dict[str, Any] = {}
        self._last_scan = -1e18
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RunEmbeddingStore({self.metadata_path!r})"

    def _scan(self) -> None:
        from embeddings.parquet_store import ParquetEmbeddingStore

        found: Dict[str, Any] = {}
        for art in reversed(embedding_artifacts(self.metadata_path)):  # oldest first
            store = ParquetEmbeddingStore(art.uri)
            for v in store.committed_versions():
                found[v] = store  # newer artifacts override older ones
        with self._lock:
            for v, store in found.items():
                old = self._stores.get(v)
                if old is None or str(old.root) != str(store.root):
                    self._stores[v] = store
            self._last_scan = time.monotonic()

    def store_for(self, model_version: str):
        """The Parquet store holding ``model_version``.

        Raises:
            VersionNotCommittedError: no MEG artifact of the run committed it (says what to run).
        """
        version = str(model_version)
        with self._lock:
            store = self._stores.get(version)
            stale = time.monotonic() - self._last_scan >= self.recheck_s
        if store is None and stale:
            self._scan()
            with self._lock:
                store = self._stores.get(version)
        if store is None:
            raise VersionNotCommittedError(
                f"model version {version!r} is not committed in the meta embeddings of run "
                f"{os.path.dirname(self.metadata_path)} (committed: {self.committed_versions()}); "
                "run meta-embedding generation for it (`limaml run`, or a refresh with the pushed "
                "model) or serve a version that has embeddings")
        return store

    def committed_versions(self) -> List[str]:
        """Versions with committed embeddings known so far."""
        with self._lock:
            return sorted(self._stores, key=lambda v: (len(v), v))

    def lookup(self, user_ids: Sequence[str], model_version: str,
               timeout_s: Optional[float] = None) -> StoreLookup:
        """Batched lookup in the store of ``model_version`` (see ``ParquetEmbeddingStore``)."""
        return self.store_for(model_version).lookup(user_ids, model_version, timeout_s=timeout_s)

    def embedding_dim(self, model_version: str) -> int:
        """E of a committed version."""
        return self.store_for(model_version).embedding_dim(model_version)


def _bigtable_client(address: str, project: str):
    """A Bigtable admin client bound to the emulator at ``address`` (env restored after)."""
    from embeddings.emulator import emulator_client

    return emulator_client(address, project, admin=True)


def load_version_into(target: Any, source: Any, model_version: str, rows_per_batch: int = 5000) -> int:
    """Copies one committed version from a store to another (e.g. Parquet -> Bigtable).

    Uses the target's own ``write`` (commit semantics of that store); the cold-start row goes
    with the users.

    Returns:
        Rows written (users plus the cold-start row).
    """
    batch = source.read_version(model_version)
    n = batch.num_users

    def chunks():
        for start in range(0, n, rows_per_batch):
            yield batch.slice(start, min(n, start + rows_per_batch))

    target.write(chunks())
    return n


# --------------------------------------------------------------------------- the stack


@dataclass
class LocalStack:
    """A running local stack; ``stop()`` shuts everything down (idempotent).

    Attributes:
        run: the run folder.
        model_name: name the global block is served as.
        model_version: the version served when the stack started.
        embedding_dim: E of that version.
        store_kind: ``"parquet"`` or ``"bigtable"``.
        store_location: where embeddings are read from (artifact path or Bigtable table).
        model_server: handle of the model server (``kind``: stand-in or the real binary).
        lookup: the embedding lookup the ranker uses.
        ranker: the ranker (gRPC client of the model server).
        service: the ranker HTTP service.
        emulator: the Bigtable emulator this stack started, if any.
        bigtable_emulator_host: ``host:port`` of the emulator in use (Bigtable store only).
    """

    run: RunFolder
    model_name: str
    model_version: str
    embedding_dim: int
    store_kind: str
    store_location: str
    model_server: Any
    lookup: Any
    ranker: Any
    service: Any
    emulator: Any = None
    bigtable_emulator_host: Optional[str] = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def model_target(self) -> str:
        """gRPC target of the model server, ``127.0.0.1:<port>``."""
        return self.model_server.target

    @property
    def ranker_url(self) -> str:
        """Base URL of the ranker HTTP service (``POST <url>/v1/rank``)."""
        return self.service.url

    def describe(self) -> List[str]:
        """Human-readable lines: where each part listens and what it serves."""
        lines = [
            f"model server ({self.model_server.kind}): grpc {self.model_target}, model "
            f"{self.model_name!r} version {self.model_version} from {self.run.serving_base}",
        ]
        if self.store_kind == "bigtable":
            lines.append(f"embeddings: bigtable emulator {self.bigtable_emulator_host}, "
                         f"{self.store_location} (E={self.embedding_dim}); clients: export "
                         f"BIGTABLE_EMULATOR_HOST={self.bigtable_emulator_host}")
        else:
            lines.append(f"embeddings: parquet {self.store_location} (E={self.embedding_dim})")
        blocks = "user + user x genre" if getattr(self.ranker, "multi_block", False) else "user"
        lines.append(f"ranker: {self.ranker_url}  (POST /v1/rank, GET /healthz, GET /readyz; "
                     f"meta blocks: {blocks})")
        return lines

    def stop(self) -> None:
        """Stops the HTTP service, the ranker, the lookup, the model server and the emulator."""
        if self._stopped:
            return
        self._stopped = True
        _stop_all([self.service, self.ranker, self.lookup, self.model_server, self.emulator])

    def __enter__(self) -> "LocalStack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop_all(parts: Sequence[Any]) -> None:
    for part in parts:
        if part is None:
            continue
        try:
            (part.stop if hasattr(part, "stop") else part.close)()
        except Exception:  # noqa: BLE001 - stop the rest anyway
            log.exception("stopping %r failed", part)


def _embedding_dim(version_dir: str, store: Any, version: str) -> int:
    dim = int(store.embedding_dim(version))
    info_path = os.path.join(version_dir, "assets.extra", "meta_block", "meta_block.json")
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as fh:
            model_dim = json.load(fh).get("embedding_dim")
        if model_dim is not None and int(model_dim) != dim:
            raise StackError(
                f"the embeddings of version {version} have E={dim} but the pushed model "
                f"{version_dir} expects E={model_dim}; rerun meta-embedding generation with this "
                "model (`limaml run --output DIR`)")
    return dim


def start_local_stack(
    run_dir: str,
    port_model: int = 0,
    port_ranker: int = 0,
    store: str = "parquet",
    host: str = "127.0.0.1",
    model_base_dir: Optional[str] = None,
    model_name: Optional[str] = None,
    model_server_binary: Optional[str] = None,
    bigtable_emulator_host: Optional[str] = None,
    bigtable_table: str = BIGTABLE_TABLE,
    load_embeddings: bool = True,
    timeout_s: float = 5.0,
    embedding_timeout_s: float = 1.0,
    cache_size: int = 100_000,
    max_candidates: int = 1000,
    poll_interval_s: float = 1.0,
    item_cache: bool = True,
    auth_token: Optional[str] = None,
    model_auth_token: Optional[str] = None,
) -> LocalStack:
    """Starts model server, embedding store, embedding lookup and ranker HTTP service of a run.

    Args:
        run_dir: the ``--output`` folder of ``limaml run``.
        port_model: gRPC port of the model server on 127.0.0.1; 0 picks a free one.
        port_ranker: HTTP port of the ranker service; 0 picks a free one.
        store: ``"parquet"`` (the run's MEG output) or ``"bigtable"`` (emulator loaded from it).
        host: interface the ranker service binds.
        model_base_dir: serve this TF Serving base instead of ``<run>/serving/limaml``.
        model_name: name to serve the model as (default: the base folder's name, ``limaml``).
        model_server_binary: TF Serving binary (default: ``tensorflow_model_server`` on PATH,
            else the stand-in; ``""`` forces the stand-in).
        bigtable_emulator_host: use the emulator at ``host:port`` instead of starting one.
        bigtable_table: Bigtable table id (project ``limaml-local``, instance ``limaml``).
        load_embeddings: Bigtable store: load the served version's embeddings from the run's
            Parquet output (False: the table already holds them, e.g. written by MEG).
        timeout_s: the ranker's gRPC deadline.
        embedding_timeout_s: budget of one embedding store call (slower calls degrade to the
            cold-start default, reported in the response).
        cache_size: LRU entries of the embedding lookup.
        max_candidates: most candidates per request.
        poll_interval_s: seconds between model server scans for newly pushed versions.
        item_cache: load the run's items (ExampleGen output) so clients may send item ids only.
        auth_token: bearer token the ranker's ``/v1/rank`` requires (None: open).
        model_auth_token: token the stand-in model server requires of the ranker (None: open).

    Returns:
        The running :class:`LocalStack`.

    Raises:
        StackError: no run, no pushed model, no embeddings for the version to serve, a port
            that cannot be bound, or an unknown store (the message says what to do).
        ValueError: bad arguments.
    """
    if store not in STORES:
        raise ValueError(f"store={store!r}; choose one of {list(STORES)}")
    folder = resolve_run(run_dir, model_base_dir)
    versions = pushed_versions(folder.serving_base)
    if not versions:
        raise StackError(_no_model_message(folder))
    version = str(versions[-1])  # what the model server's latest policy will serve
    version_dir = os.path.join(folder.serving_base, version)
    name = model_name or os.path.basename(folder.serving_base.rstrip(os.sep)) or "limaml"

    parquet = RunEmbeddingStore(folder.metadata_path)
    try:
        source = parquet.store_for(version)
    except VersionNotCommittedError as exc:
        metas = embedding_artifacts(folder.metadata_path)
        made = sorted({a.model_version for a in metas if a.model_version})
        raise StackError(
            f"no meta embeddings for the version to serve ({version}, the highest under "
            f"{folder.serving_base}); the run's meta-embedding artifacts have versions {made}. "
            "Run meta-embedding generation with the pushed model (`limaml run --output DIR` "
            f"reruns it) before serving. ({exc})") from None
    dim = _embedding_dim(version_dir, parquet, version)

    started: List[Any] = []  # stopped in reverse on failure
    try:
        emulator = None
        emu_host = None
        if store == "bigtable":
            from embeddings.bigtable_store import BigtableEmbeddingStore

            if bigtable_emulator_host:
                emu_host = bigtable_emulator_host
            else:
                from embeddings.emulator import BigtableEmulator

                emulator = BigtableEmulator(set_env=False)
                emulator.start()
                started.append(emulator)
                emu_host = emulator.address
            client = _bigtable_client(emu_host, BIGTABLE_PROJECT)
            bt = BigtableEmbeddingStore.open(BIGTABLE_PROJECT, BIGTABLE_INSTANCE, bigtable_table,
                                             client=client)
            bt.ensure_table()
            if load_embeddings:
                load_version_into(bt, source, version)
                bt.mark_pushed(version)  # served: later commits to the table never retire it
            elif version not in bt.committed_versions():
                raise StackError(
                    f"Bigtable table {bt.table.name} at {emu_host} has no committed embeddings "
                    f"for version {version} (committed: {bt.committed_versions()}); load them "
                    "(load_embeddings=True) or run meta-embedding generation into it")
            backend: Any = bt
            location = f"table {bt.table.name}"
        else:
            backend = parquet
            location = str(source.root)

        from serving import model_server
        from serving.embedding_lookup import EmbeddingLookup
        from serving.multi_block import served_meta_blocks
        from serving.ranker import Ranker
        from serving.ranker_service import start_ranker_service

        lookup = EmbeddingLookup(backend, embedding_dim=dim, cache_size=cache_size,
                                 timeout_s=embedding_timeout_s)
        started.append(lookup)
        lookup.warm_up(version)
        try:
            server = model_server.launch_model_server(
                folder.serving_base, name, port=port_model, binary=model_server_binary,
                poll_interval_s=poll_interval_s, auth_token=model_auth_token)
        except RuntimeError as exc:
            raise StackError(f"the model server did not start on port {port_model}: {exc}") from exc
        started.append(server)
        items = run_item_cache(folder.metadata_path) if item_cache else None
        ranker = Ranker(server.target, name, lookup, timeout_s=timeout_s,
                        max_candidates=max_candidates, item_cache=items,
                        auth_token=model_auth_token, meta_blocks=served_meta_blocks(version_dir))
        started.append(ranker)
        served = str(ranker.model_version(refresh=True))
        try:
            ranker.warm_up()
        except Exception as exc:  # noqa: BLE001 - a cold first call is slow, not wrong
            log.warning("ranker warm-up failed: %s", exc)
        if served != version:
            log.warning("model server serves version %s, expected %s (a push during start-up?)",
                        served, version)
        try:
            service = start_ranker_service(ranker, host=host, port=port_ranker,
                                           auth_token=auth_token)
        except OSError as exc:
            raise StackError(f"the ranker service cannot listen on {host}:{port_ranker}: {exc}; "
                             "choose another --port-ranker (0 picks a free one)") from exc
        started.append(service)
    except BaseException:
        _stop_all(list(reversed(started)))
        raise
    return LocalStack(run=folder, model_name=name, model_version=served, embedding_dim=dim,
                      store_kind=store, store_location=location, model_server=server,
                      lookup=lookup, ranker=ranker, service=service, emulator=emulator,
                      bigtable_emulator_host=emu_host)


# --------------------------------------------------------------------------- sample requests


def read_eval_requests(run_dir: str, max_users: int = 5, max_candidates: int = 100,
                       min_candidates: int = 1, max_records: int = 200_000
                       ) -> List[Dict[str, Any]]:
    """Real ranking requests from a run's evaluation examples (one per user, file order).

    Each request is ``{"user_id", "user_features", "candidates"}`` with the raw features of the
    user's evaluation interactions (candidates: item id and item features).

    Args:
        run_dir: the run folder.
        max_users: most requests.
        max_candidates: most candidates per request.
        min_candidates: skip users with fewer evaluation interactions.
        max_records: most evaluation examples read.

    Raises:
        StackError: no run or no evaluation examples.
    """
    import glob

    import tensorflow as tf

    from schema import features as F

    folder = resolve_run(run_dir)
    uri = eval_examples_uri(folder.metadata_path)
    files = sorted(glob.glob(os.path.join(uri, "Split-eval", "*")))
    if not files:
        raise StackError(f"no evaluation examples under {uri}/Split-eval; {_RUN_HINT}")
    by_user: Dict[str, Dict[str, Any]] = {}
    order: List[str] = []
    item_keys = (F.ITEM_ID,) + tuple(F.ITEM_FEATURES)
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(max_records)
    for serialized in records.as_numpy_iterator():
        feats = tf.train.Example.FromString(serialized).features.feature
        raw = {k: _feature_value(feats[k], F.CANONICAL_COLUMNS[k])
               for k in (F.USER_ID,) + tuple(F.USER_FEATURES) + item_keys if k in feats}
        user = raw.get(F.USER_ID)
        if user is None:
            continue
        req = by_user.get(user)
        if req is None:
            req = {"user_id": user,
                   "user_features": {k: raw[k] for k in F.USER_FEATURES if k in raw},
                   "candidates": []}
            by_user[user] = req
            order.append(user)
        if len(req["candidates"]) < max_candidates:
            req["candidates"].append({k: raw[k] for k in item_keys if k in raw})
    out = [by_user[u] for u in order if len(by_user[u]["candidates"]) >= min_candidates]
    return out[:max_users]


def _feature_value(feature: Any, kind: str) -> Any:
    if kind == "str":
        return feature.bytes_list.value[0].decode("utf-8") if feature.bytes_list.value else None
    if kind == "int64":
        return int(feature.int64_list.value[0]) if feature.int64_list.value else None
    return float(feature.float_list.value[0]) if feature.float_list.value else None


def post_json(url: str, payload: Mapping[str, Any], timeout_s: float = 30.0) -> Tuple[int, Dict[str, Any]]:
    """POSTs JSON to ``url``; returns ``(HTTP status, decoded JSON body)`` for any status.

    Raises:
        RuntimeError: nothing answers at ``url``.
    """
    import urllib.error
    import urllib.request

    data = json.dumps(payload).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        body = err.read().decode("utf-8", errors="replace")
        try:
            return err.code, json.loads(body)
        except json.JSONDecodeError:
            return err.code, {"error": body}
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise RuntimeError(f"cannot reach the ranker service at {url}: {reason}; is `limaml "
                           "serve` running there?") from None


def rank_url(base_url: str) -> str:
    """``<base>/v1/rank`` for a ranker base URL (a full ``/v1/rank`` URL is kept)."""
    from serving.ranker_service import RANK_PATH

    base = base_url.rstrip("/")
    return base if base.endswith(RANK_PATH) else base + RANK_PATH


__all__ = [
    "BIGTABLE_TABLE", "EmbeddingArtifact", "LocalStack", "RunEmbeddingStore",
    "RunFolder", "StackError", "embedding_artifacts", "eval_examples_uri", "load_version_into",
    "post_json", "pushed_versions", "rank_url", "read_eval_requests", "resolve_run",
    "start_local_stack",
]
