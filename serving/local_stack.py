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

Modules: :mod:`serving.run_folder` (the run folder and its ML Metadata),
:mod:`serving.run_embeddings` (the run's embeddings as one store), :mod:`serving.eval_requests`
(sample requests from the run), :mod:`serving.rank_client` (HTTP client of the ranker service);
this one starts and stops the stack.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from embeddings.record import VersionNotCommittedError
from serving.eval_requests import read_eval_requests
from serving.rank_client import post_json, rank_url
from serving.run_embeddings import RunEmbeddingStore, load_version_into
from serving.run_folder import EVAL_EXAMPLES_NODE as EVAL_EXAMPLES_NODE
from serving.run_folder import EXAMPLE_GEN_NODE as EXAMPLE_GEN_NODE
from serving.run_folder import MEG_ARTIFACT_TYPE as MEG_ARTIFACT_TYPE
from serving.run_folder import SERVING_SUBDIR as SERVING_SUBDIR
from serving.run_folder import (
    EmbeddingArtifact,
    RunFolder,
    StackError,
    _no_model_message,
    embedding_artifacts,
    eval_examples_uri,
    pushed_versions,
    resolve_run,
    run_item_cache,
)
from serving.run_folder import item_examples_uris as item_examples_uris

log = logging.getLogger(__name__)

STORES = ("parquet", "bigtable")

BIGTABLE_PROJECT = "limaml-local"
BIGTABLE_INSTANCE = "limaml"
BIGTABLE_TABLE = "meta_embeddings"


def _bigtable_client(address: str, project: str):
    """A Bigtable admin client bound to the emulator at ``address`` (env restored after)."""
    from embeddings.emulator import emulator_client

    return emulator_client(address, project, admin=True)



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
        lines.append(f"ranker: {self.ranker_url}  (POST /v1/rank, GET /healthz, GET /readyz, "
                     f"GET /metrics; meta blocks: {blocks})")
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
    batch_requests: bool = True,
    model_server_process: bool = False,
    workers: Optional[int] = None,
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
        batch_requests: the ranker batches concurrent requests into shared Predicts
            (its HTTP service sends them from the event loop, :mod:`serving.async_predict_batcher`;
            on by default, False: one Predict per request).
        model_server_process: without the TF Serving binary, run the stand-in as its own
            process (as the binary runs) instead of threads of this one, so that its Predicts
            and the ranker's request handling do not share one GIL (``limaml serve`` does).
        workers: ranker threads (None: the service's default).

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
        from serving.multi_block import served_genre_fallback, served_meta_blocks
        from serving.ranker import Ranker
        from serving.ranker_service import start_ranker_service

        lookup = EmbeddingLookup(backend, embedding_dim=dim, cache_size=cache_size,
                                 timeout_s=embedding_timeout_s)
        started.append(lookup)
        lookup.warm_up(version)
        try:
            server = model_server.launch_model_server(
                folder.serving_base, name, port=port_model, binary=model_server_binary,
                poll_interval_s=poll_interval_s, auth_token=model_auth_token,
                stand_in_process=model_server_process)
        except RuntimeError as exc:
            raise StackError(f"the model server did not start on port {port_model}: {exc}") from exc
        started.append(server)
        items = run_item_cache(folder.metadata_path) if item_cache else None
        ranker = Ranker(server.target, name, lookup, timeout_s=timeout_s,
                        max_candidates=max_candidates, item_cache=items,
                        auth_token=model_auth_token, meta_blocks=served_meta_blocks(version_dir),
                        genre_fallback=served_genre_fallback(version_dir),
                        batch_requests=batch_requests)
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
                                           auth_token=auth_token,
                                           **({"workers": workers} if workers else {}))
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



__all__ = [
    "BIGTABLE_TABLE", "EmbeddingArtifact", "LocalStack", "RunEmbeddingStore",
    "RunFolder", "StackError", "embedding_artifacts", "eval_examples_uri", "load_version_into",
    "post_json", "pushed_versions", "rank_url", "read_eval_requests", "resolve_run",
    "start_local_stack",
]
