"""Refresh: its arguments (store spec, as-of time) and what the pushed model folder says.

* :func:`parse_store`: ``parquet:<root>`` or ``bigtable:<project>/<instance>/<table>`` ->
  :class:`StoreSpec`.
* :func:`parse_as_of`: unix seconds or an ISO date / date-time (UTC unless a zone is given).
* :func:`model_version_of` / :func:`model_config`: the version (the pushed folder's integer name)
  and the :class:`~limaml.config.LimamlConfig` the model was trained with.

Used by :mod:`components.meta_embedding_gen.refresh`.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
from typing import Any, Optional

import numpy as np

from components.common.model_layout import meta_block_dir
from limaml.config import LimamlConfig

_BIGTABLE_RE = re.compile(r"^([^/\s]+)/([^/\s]+)/([^/\s]+)$")


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """Where embeddings live: ``parquet:<root>`` or ``bigtable:<project>/<instance>/<table>``.

    Attributes:
        kind: ``"parquet"`` or ``"bigtable"``.
        root: Parquet store root (kind parquet).
        project, instance, table: Bigtable ids (kind bigtable).
    """

    kind: str
    root: Optional[str] = None
    project: Optional[str] = None
    instance: Optional[str] = None
    table: Optional[str] = None

    def __str__(self) -> str:
        if self.kind == "parquet":
            return f"parquet:{self.root}"
        return f"bigtable:{self.project}/{self.instance}/{self.table}"


def parse_store(spec: str) -> StoreSpec:
    """Parses ``parquet:<dir>`` or ``bigtable:<project>/<instance>/<table>``.

    Raises:
        ValueError: any other form (the message shows both accepted forms).
    """
    kind, _, rest = (spec or "").partition(":")
    if kind == "parquet" and rest:
        return StoreSpec("parquet", root=rest)
    if kind == "bigtable":
        m = _BIGTABLE_RE.match(rest)
        if m:
            return StoreSpec("bigtable", project=m.group(1), instance=m.group(2), table=m.group(3))
    raise ValueError(f"store {spec!r} is not understood; use parquet:<dir> or "
                     "bigtable:<project>/<instance>/<table>")


def parse_as_of(text: Any) -> int:
    """Unix seconds from ``"1700000000"`` or an ISO date / date-time.

    A date alone means 00:00:00 UTC of that day; a date-time without a zone is UTC; ``Z`` and
    ``+HH:MM`` offsets are honoured.

    Raises:
        ValueError: neither form (the message names the value and gives examples).
    """
    if isinstance(text, (int, np.integer)):
        return int(text)
    s = str(text).strip()
    if re.fullmatch(r"\d+", s):
        return int(s)
    try:
        when = _dt.datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise ValueError(f"--as-of {text!r} is neither unix seconds nor an ISO date; use e.g. "
                         "1700000000, 2024-01-31 or 2024-01-31T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return int(when.timestamp())


def model_version_of(model_dir: str) -> str:
    """The version of a pushed model: its folder name, an integer string.

    Raises:
        ValueError: the folder name is not an integer (not a pushed version folder).
    """
    name = os.path.basename(os.path.normpath(model_dir))
    if not name.isdigit():
        raise ValueError(f"{model_dir}: a pushed model folder is <serving_base>/<version> with an "
                         f"integer version, got folder name {name!r}")
    return name


def model_config(model_dir: str) -> LimamlConfig:
    """The LimamlConfig the model was trained with (from ``meta_block.json``)."""
    from trainer.export import META_BLOCK_JSON

    with open(os.path.join(meta_block_dir(model_dir), META_BLOCK_JSON)) as f:
        info = json.load(f)
    return LimamlConfig.from_json(json.dumps(info["limaml_config"]))
