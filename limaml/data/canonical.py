"""The canonical interaction table (DESIGN.md section 3) and its atomic writer.

Prepared data is written as Parquet: one file ``interactions/data.parquet`` that TFX reads with
``FileBasedExampleGen`` and the Parquet executor. Parquet over CSV because it keeps the types of
the contract (``zip_prefix`` '02' stays a string, ``timestamp`` stays int64) where CSV type
inference would guess, it is columnar and compressed (1M rows in ~10 MB, read in well under a
second by the protocol code), and it is the format of the embedding store too.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Dict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from schema import features as F

INTERACTIONS_DIR = "interactions"
INTERACTIONS_FILE = "data.parquet"
MANIFEST_FILE = "manifest.json"

_ARROW_TYPES = {"str": pa.string(), "int64": pa.int64(), "float64": pa.float64()}


def arrow_schema(frame: pd.DataFrame) -> pa.Schema:
    """Arrow schema of the canonical columns present in ``frame`` (optional ones included)."""
    kinds = {**F.CANONICAL_COLUMNS, **F.OPTIONAL_COLUMNS}
    return pa.schema([(c, _ARROW_TYPES[kinds[c]]) for c in frame.columns])


def validate(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Checks the canonical contract and returns the frame sorted by (user, time, item).

    Raises:
        ValueError: a column is missing or unexpected, a value is null, a label is not 0/1,
            or a (user, item, timestamp) row is duplicated. Names ``origin``.
    """
    missing = [c for c in F.CANONICAL_COLUMNS if c not in frame.columns]
    extra = [c for c in frame.columns if c not in F.CANONICAL_COLUMNS and c not in F.OPTIONAL_COLUMNS]
    if missing or extra:
        raise ValueError(f"{origin}: canonical columns missing {missing}, unexpected {extra}")
    nulls = [c for c in frame.columns if frame[c].isna().any()]
    if nulls:
        raise ValueError(f"{origin}: null values in columns {nulls}")
    labels = set(np.unique(frame[F.LABEL]).tolist())
    if not labels <= {0, 1}:
        raise ValueError(f"{origin}: label must be 0/1, found {sorted(labels)}")
    ordered = frame.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable").reset_index(drop=True)
    dup = ordered.duplicated([F.USER_ID, F.ITEM_ID, F.TIMESTAMP])
    if dup.any():
        row = ordered[dup].iloc[0]
        raise ValueError(f"{origin}: duplicated interaction user={row[F.USER_ID]} item={row[F.ITEM_ID]} "
                         f"timestamp={row[F.TIMESTAMP]}")
    return ordered


class NotOurOutputError(ValueError):
    """The output path holds something :func:`write_prepared` did not write; nothing is replaced."""


def _is_prepared_output(path: str) -> bool:
    """Whether ``path`` is a folder exactly as :func:`write_prepared` leaves it.

    That is: only ``manifest.json`` (a JSON object naming its ``dataset``) and ``interactions/``
    holding only ``data.parquet``.
    """
    try:
        if set(os.listdir(path)) != {MANIFEST_FILE, INTERACTIONS_DIR}:
            return False
        if not set(os.listdir(os.path.join(path, INTERACTIONS_DIR))) <= {INTERACTIONS_FILE}:
            return False
        with open(os.path.join(path, MANIFEST_FILE)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "dataset" in manifest


def check_replaceable(output_dir: str) -> None:
    """Refuses an output path that holds anything but a previous output of ours.

    Replaceable: a path that does not exist, an empty folder, or a folder as
    :func:`write_prepared` leaves it (``manifest.json`` + ``interactions/data.parquet``).

    Raises:
        NotOurOutputError: a file, a symbolic link, or a folder with other content (e.g. the
            source dataset); the message names the path and how to proceed.
    """
    if not os.path.lexists(output_dir):
        return
    fix = "choose a new or empty --output folder (or remove it yourself if it is disposable)"
    if os.path.islink(output_dir):
        raise NotOurOutputError(f"output {output_dir} is a symbolic link; it is not replaced: {fix}")
    if not os.path.isdir(output_dir):
        raise NotOurOutputError(f"output {output_dir} is an existing file; it is not replaced: {fix}")
    try:
        empty = not os.listdir(output_dir)
    except OSError as err:
        raise NotOurOutputError(f"output {output_dir} cannot be listed ({err.strerror}): {fix}") from None
    if not empty and not _is_prepared_output(output_dir):
        raise NotOurOutputError(
            f"output {output_dir} holds files that limaml data prepare did not write (no "
            f"{MANIFEST_FILE} + {INTERACTIONS_DIR}/{INTERACTIONS_FILE} only); nothing was deleted: {fix}")


def write_prepared(frame: pd.DataFrame, output_dir: str, manifest: Dict[str, Any]) -> str:
    """Writes ``frame`` and its manifest to ``output_dir`` atomically.

    Everything is written into a temporary sibling folder which replaces ``output_dir`` by a
    rename only when complete: a crash leaves either the previous output or nothing, never a
    half-written one. Only a previous output of ours (or an empty folder) is ever replaced
    (:func:`check_replaceable`).

    Returns:
        The path of the interactions folder (the ExampleGen input base).

    Raises:
        NotOurOutputError: ``output_dir`` holds something else; nothing is written or deleted.
    """
    output_dir = os.path.abspath(output_dir)
    check_replaceable(output_dir)
    parent = os.path.dirname(output_dir)
    blocker = parent
    while blocker and not os.path.lexists(blocker):
        blocker = os.path.dirname(blocker)
    if blocker and not os.path.isdir(blocker):
        raise NotOurOutputError(f"output {output_dir}: {blocker} is a file, not a folder; choose an "
                                "--output inside a folder")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".prepare-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, INTERACTIONS_DIR))
        table = pa.Table.from_pandas(frame, schema=arrow_schema(frame), preserve_index=False)
        pq.write_table(table, os.path.join(tmp, INTERACTIONS_DIR, INTERACTIONS_FILE),
                       row_group_size=256 * 1024)
        with open(os.path.join(tmp, MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        old = None
        check_replaceable(output_dir)  # again, right before the swap
        if os.path.exists(output_dir):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.rename(output_dir, os.path.join(old, "x"))
        os.rename(tmp, output_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(output_dir, INTERACTIONS_DIR)


def read_prepared(prepared_dir: str, categorical: bool = False) -> pd.DataFrame:
    """Reads a prepared dataset's interactions (canonical columns, sorted by user and time).

    Args:
        prepared_dir: ``limaml data prepare`` output.
        categorical: string columns as pandas ``Categorical`` with lexicographically sorted
            categories (code order = string order), read from Parquet's dictionaries: ~3x
            faster to read than a Python ``str`` per row, and grouping, sorting and distinct
            values work on the integer codes. Default: object columns of ``str``.
    """
    path = os.path.join(prepared_dir, INTERACTIONS_DIR, INTERACTIONS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found; prepare the data first: limaml data prepare DATASET --output {prepared_dir}")
    if not categorical:
        return pq.read_table(path).to_pandas()
    schema = pq.read_schema(path)
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    frame = pq.read_table(path, read_dictionary=strings).to_pandas()
    for name in strings:
        cats = frame[name].cat.categories
        if not cats.is_monotonic_increasing:
            frame[name] = frame[name].cat.reorder_categories(cats.sort_values())
    return frame


def read_manifest(prepared_dir: str) -> Dict[str, Any]:
    """Reads the manifest written by :func:`write_prepared`."""
    with open(os.path.join(prepared_dir, MANIFEST_FILE)) as f:
        return json.load(f)
