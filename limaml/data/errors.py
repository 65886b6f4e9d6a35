"""Errors of the data readers: they name the file, the line and the field."""
from __future__ import annotations

from typing import Optional


class DataError(ValueError):
    """Bad input data.

    Attributes:
        path: the file that holds the problem.
        line: 1-based line number, when the problem sits on one line.
        field: the column or field name, when known.
    """

    def __init__(self, path: str, message: str, line: Optional[int] = None,
                 field: Optional[str] = None) -> None:
        self.path, self.line, self.field = str(path), line, field
        where = self.path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
