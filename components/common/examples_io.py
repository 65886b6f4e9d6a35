"""Reading Transform outputs per user.

TaskGen and MEG read Transform's tf.Examples as columnar user batches
(:func:`components.meta_embedding_gen.inputs.ReadUserBatchesFromExamples`: no Python object
per interaction crosses the shuffle). :func:`stack_users` builds the same grouped table from
per-user row lists (tests, small callers).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

Row = Dict[str, np.ndarray]


def split_pattern(examples_uri: str, split: str) -> str:
    """File pattern of one split of an Examples artifact."""
    return os.path.join(examples_uri, f"Split-{split}", "*")


def stack_users(users: List[Tuple[str, List[Row]]], columns: Optional[Sequence[str]] = None
                ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Concatenates several users' time-ordered rows into one table, user by user, in time order.

    One ``np.asarray`` per scalar column (``np.stack`` only for vector columns), and only the
    ``columns`` asked for: TaskGen stacks every column, MEG only what its kernel reads.

    Args:
        users: ``[(user_id, rows sorted by time)]``; every row has the same columns.
        columns: columns to stack (default: every column of the first row).

    Returns:
        (user key per row [N] as object array, {column: [N, ...]}).

    Raises:
        KeyError: a requested column is missing from the rows (named, with the columns they have).
    """
    rows = [r for _, rs in users for r in rs]
    keys = np.empty(len(rows), dtype=object)
    pos = 0
    for user, rs in users:
        keys[pos:pos + len(rs)] = user
        pos += len(rs)
    if not rows:
        return keys, {}
    first_row = rows[0]
    missing = [c for c in (columns or ()) if c not in first_row]
    if missing:
        raise KeyError(f"rows lack encoded column(s) {missing}; they have {sorted(first_row)}")
    table: Dict[str, np.ndarray] = {}
    for name in (list(columns) if columns is not None else list(first_row)):
        values = [r[name] for r in rows]
        table[name] = np.stack(values) if np.ndim(first_row[name]) else np.asarray(values)
    return keys, table
