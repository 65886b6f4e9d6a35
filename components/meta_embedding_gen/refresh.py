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

Modules: :mod:`~components.meta_embedding_gen.refresh_args` (store spec, as-of, the pushed model),
:mod:`~components.meta_embedding_gen.refresh_store` (open the store, read the stored version),
:mod:`~components.meta_embedding_gen.refresh_selection` (changed users, their last K
interactions), :mod:`~components.meta_embedding_gen.refresh_encoding` (the pushed Transform);
this one runs generation and the commit.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from components.meta_embedding_gen import generate, refresh_entities, store_io
from components.meta_embedding_gen.meta_block import (
    MetaBlockLoader,
    check_meta_block,
    genre_set_arg,
    transform_graph_dir,
)
from components.meta_embedding_gen.refresh_args import (
    StoreSpec,
    model_config,
    model_version_of,
    parse_as_of,
    parse_store,
)
from components.meta_embedding_gen.refresh_encoding import (
    ENCODE_CHUNK_ROWS,
    NEEDED_RAW_COLUMNS,
    check_columns,
    encode_with_transform,
    needed_raw_features,
    raw_spec_of,
)
from components.meta_embedding_gen.refresh_selection import changed_users, last_k
from components.meta_embedding_gen.refresh_store import (
    StoredVersion,
    _store_error,
    open_store,
    read_stored_version,
)
from embeddings.entity_keys import UserRowCount
from embeddings.record import COLD_START_USER, EmbeddingBatch
from limaml.config import LimamlConfig
from schema import features as F

__all__ = [
    "BATCH_ROWS", "ENCODE_CHUNK_ROWS", "NEEDED_RAW_COLUMNS", "RefreshSummary", "StoreSpec",
    "StoredVersion", "changed_users", "check_columns", "encode_with_transform",
    "generate_embeddings", "last_k", "model_config", "model_version_of", "needed_raw_features",
    "open_store", "parse_as_of", "parse_store", "raw_spec_of", "read_stored_version", "refresh",
]

BATCH_ROWS = 65_536


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
        beam_args: Beam pipeline flags (:func:`components.common.beam_pipeline.local_pipeline`).
        genres: multi-block models: the genre set (:func:`refresh_entities.genres_for_refresh`).
    """
    from components.common.beam_pipeline import local_pipeline
    from components.meta_embedding_gen import inputs
    from components.meta_embedding_gen.user_batch import UserBatch

    e = cfg.embeddings
    store_io.clear_staging(staging)
    input_dir = os.path.join(staging, "input")
    path = inputs.write_grouped_parquet(UserBatch.from_grouped(encoded), input_dir,
                                        max(1, e.users_per_batch * e.max_recent))
    try:
        with local_pipeline(beam_args) as p:
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
        beam_args: Beam pipeline flags for the generation (default: in process,
            :func:`components.common.beam_pipeline.local_pipeline`).
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

    frame = canonical.read_prepared(data_dir, categorical=True)  # string columns by their codes
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
