"""Strict reading of delimited text files with errors that name file, line and field."""
from __future__ import annotations

import io
from typing import List, Sequence

import numpy as np
import pandas as pd

from limaml.data.errors import DataError


def read_text(path: str, encoding: str) -> str:
    """Reads a whole text file, decoding strictly.

    Raises:
        DataError: the file is missing, looks like UTF-16/32 or binary, or does not decode
            with ``encoding`` (the error names the line of the first bad byte).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(path, "file not found; check --source points at the dataset folder") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4096]:
        raise DataError(path, f"unsupported encoding (NUL bytes or a UTF-16/32 byte-order mark); "
                              f"expected {encoding} text")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(path, f"cannot decode byte {raw[err.start]:#04x} as {encoding} "
                              f"(unknown encoding?)", line=line) from None


def parse_delimited(path: str, text: str, sep: str, columns: Sequence[str],
                    skip_header: bool = False) -> pd.DataFrame:
    """Parses ``sep``-separated text into string columns, checking the field count of every line.

    Args:
        path: file name for error messages.
        text: the decoded file content.
        sep: single-character separator (multi-character separators must be replaced first).
        columns: expected field names, in order.
        skip_header: drop the first line.

    Returns:
        DataFrame of ``len(columns)`` string columns, one row per non-empty line; the index is
        the 1-based line number in the file.

    Raises:
        DataError: a line has the wrong number of fields (names the line).
    """
    lines: List[str] = text.split("\n")
    first = 1 if skip_header else 0
    numbers = np.arange(first + 1, len(lines) + 1)
    body = lines[first:]
    keep = np.fromiter((bool(l.strip()) for l in body), dtype=bool, count=len(body))
    body = [l.rstrip("\r") for l, k in zip(body, keep) if k]
    numbers = numbers[keep]
    counts = np.fromiter((l.count(sep) for l in body), dtype=np.int64, count=len(body))
    bad = np.flatnonzero(counts != len(columns) - 1)
    if bad.size:
        i = int(bad[0])
        raise DataError(path, f"malformed row: expected {len(columns)} fields "
                              f"({sep!r}-separated: {', '.join(columns)}), found {counts[i] + 1}",
                        line=int(numbers[i]))
    frame = pd.read_csv(io.StringIO("\n".join(body)), sep=sep, header=None, names=list(columns),
                        dtype=str, keep_default_na=False, quoting=3, engine="c")
    frame.index = numbers
    return frame


def to_int(path: str, frame: pd.DataFrame, column: str) -> np.ndarray:
    """Converts a string column to int64; raises DataError naming the first bad line."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | (values != np.floor(values))
    if bad.any():
        line = int(frame.index[np.flatnonzero(bad.to_numpy())[0]])
        raise DataError(path, f"not an integer: {frame[column].loc[line]!r}", line=line, field=column)
    return values.to_numpy().astype(np.int64)


def to_float(path: str, frame: pd.DataFrame, column: str) -> np.ndarray:
    """Converts a string column to float64; raises DataError naming the first bad line."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | ~np.isfinite(values)
    if bad.any():
        line = int(frame.index[np.flatnonzero(bad.to_numpy())[0]])
        raise DataError(path, f"not a number: {frame[column].loc[line]!r}", line=line, field=column)
    return values.to_numpy().astype(np.float64)
