"""Item feature cache of the ranker: item id -> raw item features, as numpy columns.

Clients may send only item ids; the ranker fills every item feature from this cache and sends
the global block one tensor per feature (``predict_raw``), with no per-candidate ``tf.Example``.

The cache is a catalog loaded once (from a run's examples, or any rows) plus items learned from
requests that carried full features (bounded: ``max_items``; learned items never replace catalog
rows). Lookups are a dict probe per id and one fancy-index per column.

Thread-safe: one instance serves every request thread (columns are swapped, never mutated in
place, so readers need no lock).
"""
from __future__ import annotations

import glob
import os
import threading
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from schema import features as F

ITEM_FEATURE_KINDS: Mapping[str, str] = {name: F.CANONICAL_COLUMNS[name]
                                         for name in F.ITEM_FEATURES}
_NUMPY = {"str": object, "int64": np.int64, "float64": np.float64}


class ItemCache:
    """Raw item features by item id.

    Args:
        max_items: most items held (catalog plus learned); learning stops at the bound.

    Raises:
        ValueError: ``max_items < 1``.
    """

    def __init__(self, max_items: int = 1_000_000) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = int(max_items)
        self._lock = threading.Lock()
        self._index: Dict[str, int] = {}
        # Strings are held as UTF-8 bytes (what a TensorProto's string_val takes).
        self._columns: Dict[str, np.ndarray] = {
            name: np.empty(0, dtype=object if kind == "str" else _NUMPY[kind])
            for name, kind in ITEM_FEATURE_KINDS.items()}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def add(self, item_ids: Sequence[str], columns: Mapping[str, Sequence[Any]]) -> int:
        """Adds items not cached yet (known ids keep their values).

        Args:
            item_ids: ids, one per row.
            columns: every item feature -> values, one per row (strings as str or bytes).

        Returns:
            How many items were added (fewer when ``max_items`` is reached).

        Raises:
            ValueError: a missing column or a column of another length.
        """
        n = len(item_ids)
        for name in ITEM_FEATURE_KINDS:
            if name not in columns:
                raise ValueError(f"item column {name!r} is missing; give {list(ITEM_FEATURE_KINDS)}")
            if len(columns[name]) != n:
                raise ValueError(f"item column {name!r} has {len(columns[name])} values for {n} ids")
        with self._lock:
            keep: List[int] = []
            seen = set()
            room = self.max_items - len(self._index)
            for i, item in enumerate(item_ids):
                if len(keep) >= room:
                    break
                if item not in self._index and item not in seen:
                    seen.add(item)
                    keep.append(i)
            if not keep:
                return 0
            start = len(self._index)
            new_cols = {}
            for name, kind in ITEM_FEATURE_KINDS.items():
                vals = [columns[name][i] for i in keep]
                if kind == "str":
                    arr = np.empty(len(vals), dtype=object)
                    arr[:] = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in vals]
                else:
                    arr = np.asarray(vals, dtype=_NUMPY[kind])
                new_cols[name] = np.concatenate([self._columns[name], arr])
            index = dict(self._index)
            for offset, i in enumerate(keep):
                index[item_ids[i]] = start + offset
            self._columns = new_cols
            self._index = index
            return len(keep)

    def rows(self, item_ids: Sequence[str]) -> Tuple[np.ndarray, List[int]]:
        """Row numbers of ``item_ids`` and the positions of ids the cache does not know."""
        index = self._index
        rows = np.fromiter((index.get(i, -1) for i in item_ids), dtype=np.int64,
                           count=len(item_ids))
        missing = np.flatnonzero(rows < 0).tolist()
        return rows, missing

    def columns(self, rows: np.ndarray) -> Dict[str, np.ndarray]:
        """Item feature columns at ``rows`` (all known; see :meth:`rows`)."""
        cols = self._columns
        return {name: cols[name][rows] for name in ITEM_FEATURE_KINDS}

    # ------------------------------------------------------------------ loaders

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], max_items: int = 1_000_000
                     ) -> "ItemCache":
        """A cache of raw rows holding ``item_id`` and every item feature (first row wins)."""
        ids: List[str] = []
        cols: Dict[str, List[Any]] = {name: [] for name in ITEM_FEATURE_KINDS}
        for rec in records:
            ids.append(rec[F.ITEM_ID])
            for name in ITEM_FEATURE_KINDS:
                cols[name].append(rec[name])
        cache = cls(max_items)
        cache.add(ids, cols)
        return cache

    @classmethod
    def from_examples(cls, uri: str, max_items: int = 1_000_000, batch_size: int = 8192
                      ) -> "ItemCache":
        """A cache of the items in an ``Examples`` artifact (every ``Split-*`` of ``uri``).

        Reads only ``item_id`` and the item features, batch-parsed (``tf.io.parse_example``).

        Raises:
            FileNotFoundError: no example files under ``uri``.
        """
        import tensorflow as tf

        files = sorted(glob.glob(os.path.join(uri, "Split-*", "*")))
        if not files:
            raise FileNotFoundError(f"no example files under {uri}/Split-*")
        dtypes = {"str": tf.string, "int64": tf.int64, "float64": tf.float32}
        spec = {name: tf.io.VarLenFeature(dtypes[kind])
                for name, kind in {F.ITEM_ID: "str", **ITEM_FEATURE_KINDS}.items()}
        ds = (tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size)
              .map(lambda s: tf.io.parse_example(s, spec)))
        cache = cls(max_items)
        for batch in ds:
            first = {}
            for name, sp in batch.items():
                dense = tf.sparse.to_dense(sp).numpy()
                counts = np.bincount(sp.indices[:, 0].numpy(), minlength=dense.shape[0])
                # a feature no row of the batch carries: [B, 0] -> placeholders, none valid
                values = dense[:, 0] if dense.shape[1] else np.zeros(dense.shape[0], dense.dtype)
                first[name] = values, counts > 0
            ok = np.logical_and.reduce([has for _, has in first.values()])
            ids = [b.decode("utf-8") for b in first[F.ITEM_ID][0][ok]]
            cols = {name: first[name][0][ok] for name in ITEM_FEATURE_KINDS}
            cache.add(ids, cols)
            if len(cache) >= max_items:
                break
        return cache


def missing_item_error(item_ids: Sequence[str], missing: Sequence[int]) -> str:
    """The message for candidates whose item the cache does not know (first few named)."""
    named = ", ".join(f"candidates[{i}] ({item_ids[i]!r})" for i in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (f"{named}{more}: unknown item; send its features "
            f"({', '.join(ITEM_FEATURE_KINDS)}) with the candidate")


__all__ = ["ITEM_FEATURE_KINDS", "ItemCache", "missing_item_error"]
