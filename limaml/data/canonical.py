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


def write_prepared(frame: pd.DataFrame, output_dir: str, manifest: Dict[str, Any]) -> str:
    """Writes ``frame`` and its manifest to ``output_dir`` atomically.

    Everything is written into a temporary sibling folder which replaces ``output_dir`` by a
    rename only when complete: a crash leaves either the previous output or nothing, never a
    half-written one.

    Returns:
        The path of the interactions folder (the ExampleGen input base).
    """
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
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


def read_prepared(prepared_dir: str) -> pd.DataFrame:
    """Reads a prepared dataset's interactions (canonical columns, sorted by user and time)."""
    path = os.path.join(prepared_dir, INTERACTIONS_DIR, INTERACTIONS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found; prepare the data first: limaml data prepare DATASET --output {prepared_dir}")
    return pq.read_table(path).to_pandas()


def read_manifest(prepared_dir: str) -> Dict[str, Any]:
    """Reads the manifest written by :func:`write_prepared`."""
    with open(os.path.join(prepared_dir, MANIFEST_FILE)) as f:
        return json.load(f)
