"""Strict reading of delimited text files with errors that name file, line and field."""
from __future__ import annotations

import errno
import io
import os
import stat
from typing import List, Sequence

import numpy as np
import pandas as pd

from limaml.data.errors import DataError


def os_error_message(err: OSError) -> str:
    """One line saying what went wrong opening or reading a file, and what to do about it."""
    if isinstance(err, FileNotFoundError):
        return "file not found; check --source points at the dataset folder"
    if isinstance(err, IsADirectoryError):
        return "is a directory, expected a file; check --source points at the dataset folder"
    if isinstance(err, PermissionError):
        return "permission denied; make the file readable (e.g. chmod a+r) or copy it elsewhere"
    if err.errno == errno.ELOOP:
        return "symbolic link loop; point the link at the real file"
    return f"cannot read ({os.strerror(err.errno) if err.errno else err}); check the file and its folder"


def check_not_special(path: str) -> None:
    """Refuses a named pipe, socket or device in place of an input file (opening a FIFO that
    nobody writes to would block forever).

    Raises:
        DataError: ``path`` exists and is neither a regular file nor a folder (a folder is
            refused by the read itself, with its own message).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing, a loop, ...: the read names it
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(path, "is not a regular file (a named pipe, socket or device?); point "
                              "--source at the dataset's files")


def read_bytes(path: str) -> bytes:
    """Reads a whole file as bytes.

    Raises:
        DataError: any OS error (missing, a directory, unreadable, a symlink loop, ...) or a
            special file (:func:`check_not_special`), in one line naming the file and what to do.
    """
    check_not_special(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise DataError(path, os_error_message(err)) from None


def read_text(path: str, encoding: str) -> str:
    """Reads a whole text file, decoding strictly.

    Raises:
        DataError: the file is missing, looks like UTF-16/32 or binary, or does not decode
            with ``encoding`` (the error names the line of the first bad byte).
    """
    raw = read_bytes(path)
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
                    skip_header: bool = False, require_final_newline: bool = False) -> pd.DataFrame:
    """Parses ``sep``-separated text into string columns, checking the field count of every line.

    Args:
        path: file name for error messages.
        text: the decoded file content.
        sep: single-character separator (multi-character separators must be replaced first).
        columns: expected field names, in order.
        skip_header: drop the first line.
        require_final_newline: the text must end with a line break (a file cut inside its
            last line, e.g. a truncated download, does not).

    Returns:
        DataFrame of ``len(columns)`` string columns, one row per non-empty line; the index is
        the 1-based line number in the file.

    Raises:
        DataError: a line has the wrong number of fields (names the line), or the file holds
            no data row (an empty or header-only file), or (``require_final_newline``) its
            last line has no line break.
    """
    lines: List[str] = text.split("\n")
    if require_final_newline and text.strip() and not text.endswith("\n"):
        raise DataError(path, "the last line has no line break: the file looks cut inside its last "
                              "line (a truncated copy?); restore the complete file", line=len(lines))
    first = 1 if skip_header else 0
    numbers = np.arange(first + 1, len(lines) + 1)
    body = lines[first:]
    keep = np.fromiter((bool(l.strip()) for l in body), dtype=bool, count=len(body))
    body = [l.rstrip("\r") for l, k in zip(body, keep) if k]
    numbers = numbers[keep]
    if not body:
        raise DataError(path, "no data rows (the file is empty"
                              f"{' or holds only its header' if skip_header else ''}); "
                              "restore the complete file")
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


_INTEGER = r"^\s*[+-]?[0-9]+\s*$"
_INT64_MAX = np.iinfo(np.int64).max


def to_int(path: str, frame: pd.DataFrame, column: str) -> np.ndarray:
    """Converts a string column of plain integers (``[+-]digits``) to int64.

    Values such as ``1e20``, ``inf``, ``nan`` or ``1.5`` are not integers here; nor is
    anything outside the int64 range.

    Raises:
        DataError: names the first bad line and its value.
    """
    text = frame[column]
    bad = ~text.str.match(_INTEGER).to_numpy(dtype=bool)
    if not bad.any():
        big = text.str.strip().str.lstrip("+-").str.lstrip("0").str.len().to_numpy() > 18
        if big.any():  # 19+ digits may overflow int64: check those exactly
            bad = big & np.array([not -_INT64_MAX - 1 <= int(v) <= _INT64_MAX for v in text.to_numpy()])
    if bad.any():
        line = int(frame.index[np.flatnonzero(bad)[0]])
        raise DataError(path, f"not an integer: {text.loc[line]!r} (expected digits only, "
                              f"within int64)", line=line, field=column)
    return text.str.strip().astype(np.int64).to_numpy()


def to_float(path: str, frame: pd.DataFrame, column: str) -> np.ndarray:
    """Converts a string column to float64; raises DataError naming the first bad line."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | ~np.isfinite(values)
    if bad.any():
        line = int(frame.index[np.flatnonzero(bad.to_numpy())[0]])
        raise DataError(path, f"not a number: {frame[column].loc[line]!r}", line=line, field=column)
    return values.to_numpy().astype(np.float64)


# Timestamps are unix seconds from 1970-01-01 up to 2100-01-01 (UTC).
MIN_TIMESTAMP = 0
MAX_TIMESTAMP = 4_102_444_800


def to_timestamp(path: str, frame: pd.DataFrame, column: str) -> np.ndarray:
    """Converts a string column of unix seconds to int64, within a sane window.

    Raises:
        DataError: a value is not an integer (``1e20``, ``inf``, ``nan``) or lies outside
            ``[MIN_TIMESTAMP, MAX_TIMESTAMP]`` (1970-01-01 .. 2100-01-01); names line and value.
    """
    values = to_int(path, frame, column)
    bad = (values < MIN_TIMESTAMP) | (values > MAX_TIMESTAMP)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(path, f"timestamp {values[i]} outside [{MIN_TIMESTAMP}, {MAX_TIMESTAMP}] "
                              "(unix seconds, 1970-01-01 to 2100-01-01 UTC); fix or remove the line",
                        line=int(frame.index[i]), field=column)
    return values


def check_unique(path: str, frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raises DataError when two lines of ``frame`` share the values of ``columns``.

    Args:
        path: the file ``frame`` was read from (named in the error).
        frame: rows indexed by their 1-based line number (as :func:`parse_delimited` returns).
        columns: the key columns.
        what: what a row is, for the message (``"user"``, ``"rating"``).

    Raises:
        DataError: names the second line, the first line and the duplicated key.
    """
    dup = frame.duplicated(list(columns), keep=False).to_numpy()
    if not dup.any():
        return
    rows = frame[dup]
    second = rows[rows.duplicated(list(columns))].iloc[0]
    key = tuple(second[c] for c in columns)
    lines = rows.index[(rows[list(columns)] == pd.Series(key, index=list(columns))).all(axis=1)]
    desc = ", ".join(f"{c}={v!r}" for c, v in zip(columns, key))
    raise DataError(path, f"duplicated {what} ({desc}), first on line {int(lines[0])}; "
                          "remove one of the two lines", line=int(lines[1]))
