"""Meta-embedding lookup for the online ranker: store + LRU cache + timeout + cold-start fallback.

``EmbeddingLookup.lookup(user_ids, model_version)`` returns, for every user, the embedding that
``model_version``'s meta block made for that user, or that version's cold-start default
(:data:`embeddings.record.COLD_START_USER`) when the user has none. It never raises because the
store is down or slow: those users get the cold-start default and ``degraded`` says why.

* **Batched**: all cache misses of a call (plus the version's cold-start row, until cached) go to
  the store in one call (Parquet: one vectorized index join; Bigtable: one ``read_rows`` with a
  RowSet of all keys).
* **Cache**: bounded LRU keyed by ``(model_version, user_id)``; users the version does not know
  are cached too (as "cold"), fallbacks caused by store failures are not.
* **Timeout**: store calls run on a small worker pool and are abandoned after ``timeout_s``
  (the Bigtable RPC deadline is set to the same value so the worker finishes soon after). When
  every worker is still busy with abandoned calls, new calls degrade at once instead of queueing.
  Thread-safe: one instance serves all request threads.
* **Version safety**: only the requested version's values (and its own cold-start row) are ever
  returned. Asking for a version the store has not committed raises
  :class:`embeddings.record.VersionNotCommittedError` (a deployment error, not an outage).

``from_env()`` builds one from environment variables for ``serving.ranker_service
--embedding-lookup serving.embedding_lookup:from_env``.

The store protocol and :class:`LookupResult` live in :mod:`serving.lookup_types`.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from embeddings.record import (
    COLD_START_USER,
    VersionNotCommittedError,
    as_user_id_array,
    validate_model_version,
)
from serving.lookup_types import (
    SOURCE_CACHE,
    SOURCE_FALLBACK,
    SOURCE_STORE,
    EmbeddingStore,
    LookupResult,
)

__all__ = [
    "SOURCE_CACHE", "SOURCE_FALLBACK", "SOURCE_STORE", "EmbeddingLookup", "EmbeddingStore",
    "LookupResult", "from_env",
]

_MISS = object()


class EmbeddingLookup:
    """Reader API of the meta-embedding stores for the online ranker.

    Args:
        store: a :class:`embeddings.parquet_store.ParquetEmbeddingStore`,
            :class:`embeddings.bigtable_store.BigtableEmbeddingStore` or anything with
            ``lookup(user_ids, model_version, timeout_s) -> StoreLookup``.
        embedding_dim: E of the served model (lets the lookup answer when the store is down).
        cache_size: max ``(version, user)`` entries in the LRU cache (0 disables it).
        timeout_s: budget of one store call; slower calls are abandoned (fallback).
        cold_start_fallback: float32 [E] used when a version's own cold-start default is not
            known (store down before it was first read, or the version has none); zeros if None.
        max_workers: worker threads for store calls. Callers beyond that queue (still bounded
            by ``timeout_s``); when every worker is stuck in a call abandoned after its timeout,
            new calls degrade at once instead of queueing behind them.

    Raises:
        ValueError: bad sizes (named).
    """

    def __init__(self, store: EmbeddingStore, embedding_dim: int, cache_size: int = 100_000,
                 timeout_s: float = 0.05, cold_start_fallback: Optional[np.ndarray] = None,
                 max_workers: int = 4) -> None:
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.store = store
        self.embedding_dim = int(embedding_dim)
        self.cache_size = int(cache_size)
        self.timeout_s = float(timeout_s)
        if cold_start_fallback is None:
            fallback = np.zeros(self.embedding_dim, dtype=np.float32)
        else:
            fallback = np.asarray(cold_start_fallback, dtype=np.float32)
            if fallback.shape != (self.embedding_dim,) or not np.isfinite(fallback).all():
                raise ValueError(
                    f"cold_start_fallback must be finite float32 [{self.embedding_dim}], got "
                    f"shape {fallback.shape}")
        self.cold_start_fallback = fallback
        self.max_workers = int(max_workers)
        self._pool = cf.ThreadPoolExecutor(max_workers=self.max_workers,
                                           thread_name_prefix="embedding-lookup")
        self._abandoned = 0  # timed-out store calls still occupying a worker
        self._lock = threading.Lock()
        # (version, user) -> float32 [E] vector, or None meaning "unknown user: cold default".
        self._cache: "OrderedDict[tuple, Optional[np.ndarray]]" = OrderedDict()
        # version -> that version's own cold-start default [E] (bounded, newest kept).
        self._cold: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._max_cold_versions = 8
        self.stats = {"calls": 0, "store_calls": 0, "store_failures": 0, "cache_hits": 0}

    # ------------------------------------------------------------------ cache
    def cache_len(self) -> int:
        """Entries in the LRU cache now."""
        with self._lock:
            return len(self._cache)

    def clear_cache(self) -> None:
        """Empties the cache (e.g. after a version was rewritten with different input)."""
        with self._lock:
            self._cache.clear()
            self._cold.clear()

    def _cache_put_many(self, version: str, users: np.ndarray, values: Sequence[Any]) -> None:
        if self.cache_size == 0:
            return
        with self._lock:
            cache = self._cache
            for u, val in zip(users, values):
                key = (version, u)
                cache[key] = val
                cache.move_to_end(key)
            over = len(cache) - self.cache_size
            for _ in range(max(0, over)):
                cache.popitem(last=False)

    # ------------------------------------------------------------------ store call
    def _release_abandoned(self, _fut: "cf.Future") -> None:
        with self._lock:
            self._abandoned -= 1

    def _call_store(self, ids: np.ndarray, version: str):
        """Returns (StoreLookup, None) or (None, reason). Re-raises VersionNotCommittedError."""
        with self._lock:
            if self._abandoned >= self.max_workers:
                return None, (f"embedding store {self.store!r} saturated: all "
                              f"{self.max_workers} workers still busy with calls abandoned "
                              f"after the {self.timeout_s:g}s timeout")
        self.stats["store_calls"] += 1
        t0 = time.monotonic()
        try:
            fut = self._pool.submit(self.store.lookup, ids, version, timeout_s=self.timeout_s)
        except RuntimeError as exc:  # pool shut down
            return None, f"embedding lookup closed: {exc}"
        try:
            res = fut.result(timeout=self.timeout_s)
        except cf.TimeoutError:
            self.stats["store_failures"] += 1
            if not fut.cancel():  # running: it holds a worker until the store answers
                with self._lock:
                    self._abandoned += 1
                fut.add_done_callback(self._release_abandoned)
            return None, (f"embedding store {self.store!r} timed out after "
                          f"{time.monotonic() - t0:.3f}s (timeout {self.timeout_s:g}s)")
        except VersionNotCommittedError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure degrades, never raises
            self.stats["store_failures"] += 1
            msg = str(exc).splitlines()[0][:300] if str(exc) else ""
            return None, f"embedding store {self.store!r} failed: {type(exc).__name__}: {msg}"
        emb = np.asarray(res.embeddings)
        if emb.shape != (ids.shape[0], self.embedding_dim):
            raise ValueError(
                f"store {self.store!r} returned embeddings of shape {emb.shape} for "
                f"{ids.shape[0]} users of version {version!r}; this lookup is configured for "
                f"E={self.embedding_dim}: fix embedding_dim or the store")
        return res, None

    # ------------------------------------------------------------------ lookup
    def lookup(self, user_ids: Union[Sequence[str], np.ndarray],
               model_version: str) -> LookupResult:
        """Embeddings of ``user_ids`` made by ``model_version``; cold-start default if none.

        Args:
            user_ids: [N] str (duplicates allowed).
            model_version: the served model version (e.g. ``"1700000000"``).

        Returns:
            :class:`LookupResult` with ``embeddings`` float32 [N, E].

        Raises:
            VersionNotCommittedError: the store answered and has no such committed version.
            ValueError / TypeError: malformed ids or version; store/lookup size mismatch.
        """
        version = validate_model_version(str(model_version))
        ids = as_user_id_array(user_ids)
        n, e = ids.shape[0], self.embedding_dim
        self.stats["calls"] += 1
        with self._lock:
            cache = self._cache
            vals = [cache.get((version, u), _MISS) for u in ids]
            for u, val in zip(ids, vals):
                if val is not _MISS:
                    cache.move_to_end((version, u))
            cold_vec = self._cold.get(version)
        hit = np.fromiter((v is not _MISS for v in vals), dtype=bool, count=n)
        self.stats["cache_hits"] += int(hit.sum())
        out = np.empty((n, e), dtype=np.float32)
        cold = np.zeros(n, dtype=bool)
        source = np.full(n, SOURCE_CACHE, dtype=object)
        vec_hit = hit & np.fromiter((v is not None and v is not _MISS for v in vals),
                                    dtype=bool, count=n)
        if vec_hit.any():
            out[vec_hit] = np.stack([vals[i] for i in np.flatnonzero(vec_hit)])
        cold[hit & ~vec_hit] = True

        miss = ~hit
        degraded: Optional[str] = None
        if miss.any() or cold_vec is None and cold.any():
            miss_users = np.unique(ids[miss].astype(str)).astype(object) if miss.any() \
                else np.zeros(0, dtype=object)
            query = miss_users
            if cold_vec is None:
                query = np.concatenate([miss_users, np.array([COLD_START_USER], dtype=object)])
            res, reason = self._call_store(query, version) if query.size else (None, None)
            if res is not None:
                emb_q, found_q = np.asarray(res.embeddings, np.float32), np.asarray(res.found)
                if cold_vec is None:
                    if found_q[-1]:
                        cold_vec = emb_q[-1].copy()
                        with self._lock:
                            self._cold[version] = cold_vec
                            while len(self._cold) > self._max_cold_versions:
                                self._cold.popitem(last=False)
                    else:
                        degraded = (f"model version {version!r} has no cold-start row "
                                    f"({COLD_START_USER!r}) in {self.store!r}; served the "
                                    "configured fallback vector to unknown users")
                    emb_q, found_q = emb_q[:-1], found_q[:-1]
                values = [emb_q[i].copy() if found_q[i] else None
                          for i in range(miss_users.shape[0])]
                self._cache_put_many(version, miss_users, values)
                pos = np.searchsorted(miss_users.astype(str), ids[miss].astype(str))
                found_m = found_q[pos]
                rows = np.flatnonzero(miss)
                out[rows[found_m]] = emb_q[pos[found_m]]
                cold[rows[~found_m]] = True
                source[miss] = SOURCE_STORE
            else:
                degraded = reason
                cold[miss] = True
                source[miss] = SOURCE_FALLBACK
        cold |= ids == COLD_START_USER  # the reserved id is the default itself
        if cold.any():
            if cold_vec is None:
                note = (f"cold-start default of version {version!r} unknown; served the "
                        "configured fallback vector")
                degraded = note if degraded is None else f"{degraded}; {note}"
                out[cold] = self.cold_start_fallback
            else:
                out[cold] = cold_vec
        return LookupResult(embeddings=out, cold=cold, source=source, degraded=degraded,
                            model_version=version)

    def peek(self, user_id: str, model_version: str) -> Optional[Tuple[np.ndarray, bool]]:
        """One user's :meth:`lookup_cached`, without building arrays (the ranker's event loop
        asks for one user per request; ~10x cheaper than the batched call).

        Returns:
            ``(embedding [E] (a copy), cold)``, or None where :meth:`lookup_cached` would return
            None (the user, or the version's cold-start default for a user without a row, is
            not in memory). Touches the LRU entry and counts a cache hit as it does.

        Raises:
            ValueError / TypeError: a malformed version, or an id that is not a ``str``.
        """
        version = validate_model_version(str(model_version))
        if not isinstance(user_id, str):
            raise TypeError(f"user ids must be str; got {user_id!r} of type "
                            f"{type(user_id).__name__} (convert ids with str() first)")
        key = (version, user_id)
        with self._lock:
            val = self._cache.get(key, _MISS)
            if val is _MISS:
                return None
            cold = val is None or user_id == COLD_START_USER
            if cold:
                val = self._cold.get(version)
                if val is None:
                    return None
            self._cache.move_to_end(key)
        self.stats["calls"] += 1
        self.stats["cache_hits"] += 1
        return np.array(val, dtype=np.float32), cold

    def lookup_cached(self, user_ids: Union[Sequence[str], np.ndarray],
                      model_version: str) -> Optional[LookupResult]:
        """:meth:`lookup` from memory only, for callers that must not block (an event loop).

        Returns:
            What :meth:`lookup` would return when every id is in the cache (and, where one is
            known to have no row, the version's cold-start default is known too); None when
            the store would have to be asked. Never calls the store.

        Raises:
            ValueError / TypeError: malformed ids or version.
        """
        version = validate_model_version(str(model_version))
        ids = as_user_id_array(user_ids)
        n, e = ids.shape[0], self.embedding_dim
        with self._lock:
            cache = self._cache
            vals = [cache.get((version, u), _MISS) for u in ids]
            if any(v is _MISS for v in vals):
                return None
            cold = np.fromiter((v is None for v in vals), dtype=bool, count=n)
            cold |= ids == COLD_START_USER
            cold_vec = self._cold.get(version)
            if cold_vec is None and cold.any():
                return None
            for u in ids:
                cache.move_to_end((version, u))
        self.stats["calls"] += 1
        self.stats["cache_hits"] += n
        out = np.empty((n, e), dtype=np.float32)
        if (~cold).any():
            out[~cold] = np.stack([vals[i] for i in np.flatnonzero(~cold)])
        if cold.any():
            out[cold] = cold_vec
        return LookupResult(embeddings=out, cold=cold,
                            source=np.full(n, SOURCE_CACHE, dtype=object), degraded=None,
                            model_version=version)

    def warm_up(self, model_version: str, timeout_s: Optional[float] = None) -> np.ndarray:
        """Loads a version's cold-start default (and, for Parquet, the version) before serving.

        Call it at start-up or when a new model version is pushed, so the first requests do not
        pay the store's cold start (which may exceed ``timeout_s`` and degrade them).

        Args:
            model_version: version to prepare.
            timeout_s: budget for this call; default 30 s.

        Returns:
            The cold-start default [E] that will be served for the version.

        Raises:
            VersionNotCommittedError: the version is not committed.
            Any store error (unlike :meth:`lookup`, warm-up reports failures).
        """
        version = validate_model_version(str(model_version))
        fut = self._pool.submit(self.store.lookup, np.array([COLD_START_USER], dtype=object),
                                version, timeout_s or 30.0)
        res = fut.result(timeout=timeout_s or 30.0)
        emb = np.asarray(res.embeddings, dtype=np.float32)
        if emb.shape != (1, self.embedding_dim):
            raise ValueError(
                f"store {self.store!r} holds E={emb.shape[-1]} for version {version!r}; this "
                f"lookup is configured for E={self.embedding_dim}")
        if not res.found[0]:
            return self.cold_start_fallback
        with self._lock:
            self._cold[version] = emb[0].copy()
            while len(self._cold) > self._max_cold_versions:
                self._cold.popitem(last=False)
        return emb[0].copy()

    def check_readable(self, model_version: str, timeout_s: Optional[float] = None) -> None:
        """Reads ``model_version``'s cold-start row from the store itself (no cache): readiness.

        Args:
            model_version: the served version.
            timeout_s: budget; default ``max(timeout_s, 1 s)``.

        Raises:
            VersionNotCommittedError: the version has no committed embeddings.
            TimeoutError: the store did not answer in time.
            Any store error.
        """
        version = validate_model_version(str(model_version))
        budget = timeout_s or max(self.timeout_s, 1.0)
        fut = self._pool.submit(self.store.lookup, np.array([COLD_START_USER], dtype=object),
                                version, timeout_s=budget)
        try:
            res = fut.result(timeout=budget)
        except cf.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"embedding store {self.store!r} did not answer within "
                               f"{budget:g}s") from None
        if np.asarray(res.embeddings).shape != (1, self.embedding_dim):
            raise ValueError(f"store {self.store!r} holds another E than {self.embedding_dim} "
                             f"for version {version!r}")

    def close(self) -> None:
        """Stops the worker pool (abandoned store calls finish in the background)."""
        self._pool.shutdown(wait=False)

    def __enter__(self) -> "EmbeddingLookup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def from_env() -> EmbeddingLookup:
    """Builds a lookup from environment variables (factory for ``serving.ranker_service``).

    Variables:
        LIMAML_EMBEDDING_STORE: ``parquet:<dir>`` (default backend) or
            ``bigtable:<project>/<instance>/<table>`` (honours ``BIGTABLE_EMULATOR_HOST``).
        LIMAML_EMBEDDING_DIM: E (required).
        LIMAML_EMBEDDING_TIMEOUT_S: store timeout, default 0.05.
        LIMAML_EMBEDDING_CACHE_SIZE: LRU entries, default 100000.

    Raises:
        ValueError: a variable is missing or malformed (the message names it).
    """
    spec = os.environ.get("LIMAML_EMBEDDING_STORE")
    dim = os.environ.get("LIMAML_EMBEDDING_DIM")
    if not spec or not dim:
        raise ValueError(
            "set LIMAML_EMBEDDING_STORE (parquet:<dir> or bigtable:<project>/<instance>/<table>) "
            f"and LIMAML_EMBEDDING_DIM; got {spec!r} and {dim!r}")
    kind, _, target = spec.partition(":")
    if kind == "parquet" and target:
        from embeddings.parquet_store import ParquetEmbeddingStore

        store: Any = ParquetEmbeddingStore(target)
    elif kind == "bigtable" and target.count("/") == 2:
        from embeddings.bigtable_store import BigtableEmbeddingStore

        project, instance, table = target.split("/")
        store = BigtableEmbeddingStore.open(project, instance, table)
    else:
        raise ValueError(
            f"LIMAML_EMBEDDING_STORE={spec!r}: expected parquet:<dir> or "
            "bigtable:<project>/<instance>/<table>")
    return EmbeddingLookup(
        store, embedding_dim=int(dim),
        timeout_s=float(os.environ.get("LIMAML_EMBEDDING_TIMEOUT_S", "0.05")),
        cache_size=int(os.environ.get("LIMAML_EMBEDDING_CACHE_SIZE", "100000")))
