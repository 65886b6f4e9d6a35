"""The folder of a local pipeline run, as serving reads it (``limaml serve``, tests, benchmarks).

A ``limaml run --output DIR`` folder holds the run's SQLite ML Metadata (``metadata.sqlite``) and
the TF Serving base the pipeline pushes blessed models to (``serving/limaml``). This module
checks such a folder (:func:`resolve_run`), lists the pushed versions (:func:`pushed_versions`)
and reads from the run's ML Metadata what serving needs: the meta-embedding artifacts
(:func:`embedding_artifacts`), the evaluation examples (:func:`eval_examples_uri`) and the items
of the newest ExampleGen output (:func:`run_item_cache`). A folder without a run, or ML Metadata
that cannot be read, is a :class:`StackError` that says what to run.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, List, Optional

from components.artifacts.names import META_EMBEDDINGS_TYPE as MEG_ARTIFACT_TYPE
from components.artifacts.names import MODEL_VERSION_PROPERTY
from pipeline import run_metadata
from pipeline.run_metadata import METADATA_FILE
from pipeline.settings import EMBEDDING_JOIN

log = logging.getLogger(__name__)

SERVING_SUBDIR = os.path.join("serving", "limaml")
EVAL_EXAMPLES_NODE = EMBEDDING_JOIN  # examples of a run that got past validation and training
EXAMPLE_GEN_NODE = "ProtocolExampleGen"  # every item of the run (train and eval splits)

_RUN_HINT = "run the pipeline first: `limaml run --output DIR`, then pass that DIR"


class StackError(RuntimeError):
    """The local stack cannot start; the message says what is missing and what to run."""


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
