"""What the BlockPusher tells the embedding stores: this version is pushed (served, blessed).

Meta-embedding generation commits every run's version before the Evaluator decides, so a store
alone cannot tell the served version from unblessed ones. The pusher records the push in the
store's serving pins (:mod:`embeddings.retention`) before it copies the model: retention after
later commits never collects the served version or the one before it (rollback), and collects
unblessed versions first.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from embeddings.retention import ServingPins

_TABLE_RE = re.compile(r"^([^/\s]+)/([^/\s]+)/([^/\s]+)$")


def open_bigtable_store(table_path: str, client: Optional[Any] = None):
    """The Bigtable store at ``<project>/<instance>/<table>`` (honours BIGTABLE_EMULATOR_HOST).

    Raises:
        ValueError: ``table_path`` is not of that form (named).
    """
    from embeddings.bigtable_store import BigtableEmbeddingStore

    m = _TABLE_RE.match(table_path or "")
    if not m:
        raise ValueError(f"embedding table {table_path!r} is not <project>/<instance>/<table>; "
                         "pass the Bigtable table the pipeline's meta-embedding generation writes")
    return BigtableEmbeddingStore.open(m.group(1), m.group(2), m.group(3), client=client)


def pin_pushed_version(store: Any, model_version: str) -> ServingPins:
    """Records in ``store`` (Parquet or Bigtable) that ``model_version`` is pushed.

    Returns:
        The store's new serving pins.
    """
    return store.mark_pushed(str(model_version))
