"""Online ranking: a user's meta embedding + candidate features -> one TF Serving Predict.

For a request ``(user_id, candidates)`` the ranker (DESIGN.md sections 1 and 5):

1. validates the request (types from ``schema.features.CANONICAL_COLUMNS``; missing,
   unknown or ill-typed features and too many candidates raise ``InvalidRequest`` naming the
   field), before any network call;
2. finds the model version being served (``GetModelStatus``, highest AVAILABLE version; cached
   for ``version_refresh_s``);
3. looks up the user's meta embedding *for that version* through the embedding lookup; unknown
   users or a down/slow store give the cold-start default and a reason, which the response
   carries (``cold_start``, ``degraded``);
4. sends ONE ``PredictRequest`` pinned to that version (so version v only ever receives
   embeddings of version v), under a deadline: when the version's global block has the
   ``predict_raw`` signature (asked once per version with ``GetModelMetadata``) and every raw
   input is known, one tensor per feature built from numpy columns
   (:mod:`serving.predict_request`); otherwise every candidate as a serialized ``tf.Example``
   (raw features + ``meta_embedding``) in input ``examples`` of ``serving_default``;
5. returns the ``probabilities`` in candidate order.

Item features may come from an :class:`serving.item_cache.ItemCache`: then a candidate needs
only its ``item_id`` (``rank``), or the client sends ids alone (``rank_items``).

A multi-block model (``meta_blocks=("user", "user_x_genre")``) gets, per candidate, the 2E-wide
``[e_user, e_user×genre]`` of the candidate's primary genre, read with the user's row in one
batched lookup, with the fallback chain of :mod:`serving.multi_block` (user × genre → user →
cold-start rows); each response carries the per-candidate fallback counts (``fallbacks``) and
``Ranker.fallback_counts`` sums them over requests.

If the model server cannot answer, ``ModelServerUnavailable`` is raised: the ranker never makes
up a score.

The embedding lookup is anything with
``lookup(user_ids: Sequence[str], model_version: str) -> LookupResult`` where the result has
``embeddings`` (float32 [N, E]), ``cold`` (bool [N]) and ``degraded`` (Optional[str]); see
``serving.embedding_lookup``.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from embeddings.entity_keys import SEPARATOR as ENTITY_SEPARATOR
from schema import features as F
from serving import multi_block as MB
from serving import predict_request as PR
from serving.item_cache import ITEM_FEATURE_KINDS, ItemCache, missing_item_error
from serving.tf_example import (
    DEFAULT_REQUIRED_CANDIDATE_FEATURES,
    SERVING_FEATURE_KINDS,
    FeatureError,
    check_value,
    serialize_candidates,
    validate_features,
)

log = logging.getLogger(__name__)

SERVING_SIGNATURE = PR.SERVING_SIGNATURE
RAW_SIGNATURE = PR.RAW_SIGNATURE
EXAMPLES_INPUT = PR.EXAMPLES_INPUT
PROBABILITIES_OUTPUT = PR.PROBABILITIES_OUTPUT

_AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
# gRPC codes meaning "the model server cannot serve this now" (vs. a contract bug).
_UNAVAILABLE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
})


class RankerError(Exception):
    """Base of the ranker's errors."""


class InvalidRequest(RankerError):
    """The ranking request is malformed.

    Attributes:
        field: the offending field, e.g. ``"candidates[3].release_year"``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message if message.startswith(field) else f"{field}: {message}")
        self.field = field


class ModelServerError(RankerError):
    """The model server answered with an error that is not an outage (contract mismatch)."""


class ModelServerUnavailable(ModelServerError):
    """The model server is down, too slow, or does not serve the model now."""


class EmbeddingLookupError(RankerError):
    """The embedding lookup failed instead of falling back to the cold-start default.

    Attributes:
        model_version: the version whose embeddings were asked for, when known.
    """

    def __init__(self, message: str, model_version: Optional[str] = None) -> None:
        super().__init__(message)
        self.model_version = model_version


class LookupResultLike(Protocol):
    """What ``EmbeddingLookup.lookup`` returns (``serving.embedding_lookup.LookupResult``)."""

    embeddings: np.ndarray
    cold: np.ndarray
    degraded: Optional[str]


class EmbeddingLookup(Protocol):
    """The embedding lookup interface the ranker uses."""

    def lookup(self, user_ids: Sequence[str], model_version: str) -> LookupResultLike:
        """Embeddings of ``user_ids`` made by ``model_version``, cold-start default if none."""


@dataclass(frozen=True)
class RankResponse:
    """The result of ``Ranker.rank``.

    Attributes:
        scores: click probability per candidate, in candidate order.
        model_version: the served model version that scored them (and made the embedding).
        cold_start: the user had no embedding for that version; the cold-start default was used.
        degraded: why the embedding may be worse than usual (store down/slow), else None.
    """

    scores: List[float]
    model_version: str
    cold_start: bool
    degraded: Optional[str] = None
    fallbacks: Optional[Dict[str, int]] = None

    def to_json(self) -> Dict[str, Any]:
        """The response as a JSON-ready dict (``fallbacks`` only for a multi-block model)."""
        out = {"scores": list(self.scores), "model_version": self.model_version,
               "cold_start": self.cold_start, "degraded": self.degraded}
        if self.fallbacks is not None:
            out["fallbacks"] = dict(self.fallbacks)
        return out


@dataclass
class _VersionCache:
    version: Optional[int] = None
    fetched_at: float = field(default=-1e18)


class Ranker:
    """Scores candidates for a user with the served global block.

    Args:
        model_channel_target: gRPC target of TF Serving (or the stand-in), e.g. ``"host:8500"``.
        model_name: the served model's name.
        embedding_lookup: object with ``lookup(user_ids, model_version) -> LookupResult``.
        timeout_s: deadline of each gRPC call to the model server.
        max_candidates: most candidates per request.
        required_features: features every candidate must carry (default: item id and item
            features from ``schema.features``).
        version_refresh_s: how long the served version is cached before asking again.
        item_cache: item features by item id; with it a candidate needs only ``item_id``
            (features it carries win over the cache).
        use_raw_signature: send ``predict_raw`` requests where the served version has the
            signature (False: always ``serving_default`` tf.Examples).
        auth_token: shared token sent as ``authorization: Bearer <token>`` gRPC metadata
            (the stand-in's ``--auth_token_file``); None sends none.
        max_message_bytes: largest gRPC message sent or received.
        meta_blocks: the served model's meta blocks: ``("user",)`` (one embedding per user) or
            ``("user", "user_x_genre")`` (``[e_user, e_user×genre]`` per candidate,
            :mod:`serving.multi_block`).

    Raises:
        ValueError: for a non-positive timeout or max_candidates, or an empty target/name.
    """

    def __init__(
        self,
        model_channel_target: str,
        model_name: str,
        embedding_lookup: EmbeddingLookup,
        timeout_s: float = 1.0,
        max_candidates: int = 1000,
        required_features: Sequence[str] = DEFAULT_REQUIRED_CANDIDATE_FEATURES,
        version_refresh_s: float = 5.0,
        item_cache: Optional[ItemCache] = None,
        use_raw_signature: bool = True,
        auth_token: Optional[str] = None,
        max_message_bytes: int = 16 << 20,
        meta_blocks: Sequence[str] = ("user",),
    ) -> None:
        if not model_channel_target:
            raise ValueError("model_channel_target is empty; pass TF Serving's 'host:port'")
        if not model_name:
            raise ValueError("model_name is empty; pass the name TF Serving serves the model as")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s}; must be > 0 seconds")
        if max_candidates < 1:
            raise ValueError(f"max_candidates={max_candidates}; must be >= 1")
        unknown = [f for f in required_features if f not in SERVING_FEATURE_KINDS]
        if unknown:
            raise ValueError(
                f"required_features {unknown} are not serving features; choose from "
                f"{sorted(SERVING_FEATURE_KINDS)}"
            )
        self.target = model_channel_target
        self.model_name = model_name
        self.timeout_s = float(timeout_s)
        self.max_candidates = int(max_candidates)
        self.required_features = tuple(required_features)
        self.version_refresh_s = float(version_refresh_s)
        self._lookup = embedding_lookup
        self.item_cache = item_cache
        self.use_raw_signature = bool(use_raw_signature)
        self.multi_block = MB.is_multi_block(meta_blocks)
        self._genres = MB.PrimaryGenres() if self.multi_block else None
        self.fallback_counts: Dict[str, int] = dict.fromkeys(MB.FALLBACKS, 0)
        self._fallback_lock = threading.Lock()
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else None
        self._channel = grpc.insecure_channel(
            model_channel_target,
            options=[("grpc.max_receive_message_length", int(max_message_bytes)),
                     ("grpc.max_send_message_length", int(max_message_bytes))],
        )
        self._raw_inputs: Dict[int, Optional[Dict[str, int]]] = {}
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._status = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._version = _VersionCache()
        self._version_lock = threading.Lock()
        self._candidate_allowed = tuple(f for f in SERVING_FEATURE_KINDS if f != F.USER_ID)
        self._candidate_required = ((F.ITEM_ID,) if item_cache is not None
                                    else self.required_features)
        self._user_allowed = tuple(F.USER_FEATURES)

    # ----------------------------------------------------------------- public API

    def rank(
        self,
        user_id: str,
        candidates: Sequence[Mapping[str, Any]],
        user_features: Optional[Mapping[str, Any]] = None,
    ) -> RankResponse:
        """Scores ``candidates`` for ``user_id``.

        Args:
            user_id: the user.
            candidates: raw feature dicts, one per candidate; each needs
                ``self.required_features`` and may hold other serving features.
            user_features: optional raw user features (``schema.features.USER_FEATURES``)
                added to every candidate's example.

        Returns:
            Scores in candidate order, the model version, the cold-start flag and the
            degradation reason.

        Raises:
            InvalidRequest: naming the bad field.
            ModelServerUnavailable: the model server is down, too slow, or lacks the model.
            ModelServerError: the model server rejected the request (contract mismatch).
            EmbeddingLookupError: the lookup raised or returned a malformed result.
        """
        self.validate(user_id, candidates, user_features)
        return self._rank_columns(user_id, self._candidate_columns(candidates), len(candidates),
                                  user_features)

    def rank_items(
        self,
        user_id: str,
        item_ids: Sequence[str],
        user_features: Optional[Mapping[str, Any]] = None,
    ) -> RankResponse:
        """Scores items given by id only; their features come from the item cache.

        Args:
            user_id: the user.
            item_ids: candidate item ids (strings), in the order of the returned scores.
            user_features: optional raw user features.

        Returns:
            As :meth:`rank`.

        Raises:
            InvalidRequest: no item cache, a malformed id list, or an id the cache does not know.
            ModelServerUnavailable, ModelServerError, EmbeddingLookupError: as :meth:`rank`.
        """
        if self.item_cache is None:
            raise InvalidRequest("item_ids", "this ranker has no item cache; send candidates "
                                             "with their features")
        self._validate_common(user_id, item_ids, "item_ids", user_features)
        bad = next((i for i, x in enumerate(item_ids) if not isinstance(x, str) or not x), None)
        if bad is not None:
            raise InvalidRequest(f"item_ids[{bad}]", f"expected a non-empty string, got "
                                 f"{type(item_ids[bad]).__name__} {item_ids[bad]!r}")
        try:
            for i, x in enumerate(item_ids):
                check_value(f"item_ids[{i}]", "str", x)
        except FeatureError as exc:
            raise InvalidRequest(exc.field, str(exc)) from None
        columns: Dict[str, list] = {F.ITEM_ID: list(item_ids)}
        return self._rank_columns(user_id, columns, len(item_ids), user_features)

    def warm_up(self) -> Optional[RankResponse]:
        """Sends one request through the fast path (first item of the cache, blank user
        features), so the model server's first call of the served version (function and table
        initialisation, seconds on a busy machine) is not paid by clients under their deadline.

        Returns:
            The warm-up response, or None without an item cache.

        Raises:
            Whatever :meth:`rank_items` raises.
        """
        cache = self.item_cache
        if cache is None or not len(cache):
            return None
        item = next(iter(cache._index))
        return self.rank_items("warm-up", [item], {name: "" for name in self._user_allowed
                                                   if SERVING_FEATURE_KINDS[name] == "str"})

    def readiness(self) -> int:
        """The served version, once the model server serves it and its embeddings are readable.

        Raises:
            ModelServerUnavailable: the model server cannot be asked or serves no version.
            EmbeddingLookupError: the served version's embeddings cannot be read (not committed,
                store down or slow).
        """
        version = self.model_version(refresh=True)
        check = getattr(self._lookup, "check_readable", None)
        try:
            if check is not None:
                check(str(version))
            else:
                self._embedding("readiness-probe", version)
        except EmbeddingLookupError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure means not ready
            raise EmbeddingLookupError(
                f"embeddings of model version {version} are not readable: "
                f"{type(exc).__name__}: {exc}", str(version)) from exc
        return version

    def _rank_columns(self, user_id: str, columns: Dict[str, list], n: int,
                      user_features: Optional[Mapping[str, Any]]) -> RankResponse:
        self._fill_items(columns, n)
        version = self.model_version()
        try:
            return self._rank_at(version, user_id, columns, n, user_features)
        except _VersionGone:
            # The pinned version was unloaded between status and predict (a new push): refresh
            # once and redo the lookup so the embedding matches the new version.
            version = self.model_version(refresh=True)
            try:
                return self._rank_at(version, user_id, columns, n, user_features)
            except _VersionGone as exc:
                raise ModelServerUnavailable(str(exc)) from None

    def _candidate_columns(self, candidates: Sequence[Mapping[str, Any]]) -> Dict[str, list]:
        names = set()
        for cand in candidates:
            names.update(cand)
        return {name: [c.get(name) for c in candidates] for name in names}

    def _fill_items(self, columns: Dict[str, Any], n: int) -> None:
        """Item features the candidates lack, from the item cache (in place)."""
        cache = self.item_cache
        if cache is None:
            return
        present = [name for name in ITEM_FEATURE_KINDS if name in columns]
        if not present:  # ids only: whole columns from the cache, no per-candidate work
            need = list(range(n))
        else:
            need = [i for i in range(n)
                    if any(columns.get(name) is None or columns[name][i] is None
                           for name in ITEM_FEATURE_KINDS)]
            if not need:
                return
        ids = columns[F.ITEM_ID]
        rows, missing = cache.rows([ids[i] for i in need] if len(need) < n else ids)
        if missing:
            raise InvalidRequest(f"candidates[{need[missing[0]]}]",
                                 missing_item_error(ids, [need[m] for m in missing]))
        found = cache.columns(rows)
        for name in ITEM_FEATURE_KINDS:
            if len(need) == n and name not in columns:
                columns[name] = found[name]
                continue
            col = columns.setdefault(name, [None] * n)
            if isinstance(col, np.ndarray):
                col = columns[name] = list(col)
            for j, i in enumerate(need):
                if col[i] is None:
                    col[i] = found[name][j]

    def validate(
        self,
        user_id: Any,
        candidates: Any,
        user_features: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Checks a request without calling anything.

        Raises:
            InvalidRequest: naming the first bad field.
        """
        self._validate_common(user_id, candidates, "candidates", user_features)
        try:
            shared = {k for k, v in (user_features or {}).items() if v is not None}
            for i, cand in enumerate(candidates):
                validate_features(cand, f"candidates[{i}]", required=self._candidate_required,
                                  allowed=self._candidate_allowed)
                for name in shared.intersection(cand):
                    if cand[name] is not None:
                        raise FeatureError(
                            f"candidates[{i}].{name}",
                            "is also given in user_features; send it in one place only",
                        )
        except FeatureError as exc:
            raise InvalidRequest(exc.field, str(exc)) from None

    def _validate_common(self, user_id: Any, candidates: Any, field: str,
                         user_features: Optional[Mapping[str, Any]]) -> None:
        if not isinstance(user_id, str) or not user_id:
            raise InvalidRequest(
                "user_id", f"expected a non-empty string, got {type(user_id).__name__} {user_id!r}"
            )
        if not isinstance(candidates, (list, tuple)):
            what = "feature objects" if field == "candidates" else "item id strings"
            raise InvalidRequest(
                field, f"expected a list of {what}, got {type(candidates).__name__}"
            )
        if not candidates:
            raise InvalidRequest(field, f"is empty; send 1 to {self.max_candidates} candidates")
        if len(candidates) > self.max_candidates:
            raise InvalidRequest(
                field,
                f"{len(candidates)} candidates is more than max_candidates={self.max_candidates};"
                " split the request",
            )
        try:
            check_value("user_id", "str", user_id)
            if user_features is not None:
                validate_features(user_features, "user_features", allowed=self._user_allowed)
        except FeatureError as exc:
            raise InvalidRequest(exc.field, str(exc)) from None

    def model_version(self, refresh: bool = False) -> int:
        """The highest AVAILABLE version of the model, cached for ``version_refresh_s``.

        Raises:
            ModelServerUnavailable: if the server cannot be asked or serves no version.
        """
        now = time.monotonic()
        with self._version_lock:
            cached = self._version
            if (not refresh and cached.version is not None
                    and now - cached.fetched_at < self.version_refresh_s):
                return cached.version
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = self.model_name
        try:
            resp = self._status.GetModelStatus(req, timeout=self.timeout_s,
                                               metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._rpc_failure("GetModelStatus", exc) from None
        available = [s.version for s in resp.model_version_status if s.state == _AVAILABLE]
        if not available:
            raise ModelServerUnavailable(
                f"model server {self.target} has no AVAILABLE version of model "
                f"{self.model_name!r} (states: "
                f"{[(s.version, s.state) for s in resp.model_version_status]})"
            )
        version = max(available)
        with self._version_lock:
            self._version = _VersionCache(version, time.monotonic())
        return version

    def close(self) -> None:
        """Closes the gRPC channel."""
        self._channel.close()

    def __enter__(self) -> "Ranker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    def _embedding(self, user_id: str, version: int):
        try:
            res = self._lookup.lookup([user_id], str(version))
        except Exception as exc:  # noqa: BLE001 - report any lookup failure as one error type
            raise EmbeddingLookupError(
                f"embedding lookup for user {user_id!r} at model version {version} failed: "
                f"{type(exc).__name__}: {exc}", str(version)
            ) from exc
        emb = np.asarray(getattr(res, "embeddings", None), dtype=np.float32)
        cold = np.asarray(getattr(res, "cold", None))
        if emb.ndim != 2 or emb.shape[0] != 1 or emb.shape[1] < 1 or cold.shape != (1,):
            raise EmbeddingLookupError(
                f"embedding lookup returned embeddings of shape {emb.shape} and cold of shape "
                f"{cold.shape} for 1 user; expected [1, E] and [1]"
            )
        if not np.all(np.isfinite(emb)):
            raise EmbeddingLookupError(
                f"embedding lookup returned a non-finite embedding for user {user_id!r}"
            )
        return emb[0], bool(cold[0]), getattr(res, "degraded", None)

    def _raw_inputs_of(self, version: int) -> Optional[Dict[str, int]]:
        """``predict_raw`` inputs of a served version (None: use ``serving_default``)."""
        if not self.use_raw_signature:
            return None
        if version in self._raw_inputs:
            return self._raw_inputs[version]
        req = get_model_metadata_pb2.GetModelMetadataRequest()
        req.model_spec.name = self.model_name
        req.model_spec.version.value = version
        req.metadata_field.append("signature_def")
        try:
            resp = self._predict.GetModelMetadata(req, timeout=self.timeout_s,
                                                  metadata=self._metadata)
        except grpc.RpcError as exc:
            if exc.code() in _UNAVAILABLE_CODES:
                raise self._rpc_failure("GetModelMetadata", exc) from None
            log.warning("GetModelMetadata of %s version %d failed (%s): using %s",
                        self.model_name, version, exc.code(), SERVING_SIGNATURE)
            inputs = None
        else:
            inputs = PR.raw_signature_inputs(resp)
        if len(self._raw_inputs) > 16:
            self._raw_inputs.clear()
        self._raw_inputs[version] = inputs
        return inputs

    def _raw_columns(self, inputs: Mapping[str, int], user_id: str, columns: Dict[str, list],
                     n: int, user_features: Optional[Mapping[str, Any]]) -> Optional[dict]:
        """Columns for ``predict_raw``, or None when a raw input has no value for some row."""
        out = {}
        shared = {**(user_features or {}), F.USER_ID: user_id}
        for name, dtype in inputs.items():
            value = shared.get(name)
            if value is not None:
                if dtype == types_pb2.DT_STRING:
                    out[name] = [value.encode("utf-8")] * n
                else:
                    out[name] = np.full(n, value)
                continue
            col = columns.get(name)
            if col is None:
                return None
            if isinstance(col, np.ndarray) and col.dtype != object:
                out[name] = col
                continue
            if any(v is None for v in col):
                return None
            if dtype == types_pb2.DT_STRING:
                out[name] = [v.encode("utf-8") if isinstance(v, str) else v for v in col]
            else:
                out[name] = np.asarray(col)
        return out

    def _candidate_embeddings(self, version: int, user_id: str, columns: Dict[str, list], n: int):
        """Multi-block: ``([n, 2E], cold, degraded, fallbacks)`` from one batched lookup."""
        if ENTITY_SEPARATOR in user_id:
            raise InvalidRequest("user_id", f"{user_id!r} contains "
                                 f"{ENTITY_SEPARATOR!r}, the separator of user × genre "
                                 "keys; such ids are not served by a multi-block model")
        col = columns.get(F.GENRES)
        genres = self._genres([None] * n if col is None else col)
        try:
            res = MB.candidate_embeddings(self._lookup, user_id, genres, str(version))
        except Exception as exc:  # noqa: BLE001 - report any lookup failure as one error type
            raise EmbeddingLookupError(
                f"embedding lookup for user {user_id!r} at model version {version} failed: "
                f"{type(exc).__name__}: {exc}", str(version)) from exc
        if not np.all(np.isfinite(res.embeddings)):
            raise EmbeddingLookupError(
                f"embedding lookup returned a non-finite embedding for user {user_id!r}")
        with self._fallback_lock:
            for name, count in res.fallbacks.items():
                self.fallback_counts[name] += count
        return res.embeddings, res.cold, res.degraded, res.fallbacks

    def _rank_at(self, version: int, user_id: str, columns: Dict[str, list], n: int,
                 user_features: Optional[Mapping[str, Any]]) -> RankResponse:
        fallbacks = None
        if self.multi_block:
            emb, cold, degraded, fallbacks = self._candidate_embeddings(version, user_id, columns, n)
        else:
            emb, cold, degraded = self._embedding(user_id, version)
        inputs = self._raw_inputs_of(version)
        raw = self._raw_columns(inputs, user_id, columns, n, user_features) if inputs else None
        if raw is not None:
            req = PR.raw_request(self.model_name, version, inputs, raw, emb, n)
        else:
            cands = [{k: (v[i].decode("utf-8") if isinstance(v[i], bytes) else
                          v[i].item() if isinstance(v[i], np.generic) else v[i])
                      for k, v in columns.items() if v[i] is not None} for i in range(n)]
            req = PR.examples_request(self.model_name, version,
                                      serialize_candidates(user_id, cands, emb, user_features))
        try:
            resp = self._predict.Predict(req, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                # TF Serving: "Servable not found for request: Specific(name, version)"
                raise _VersionGone(
                    f"model server {self.target} no longer serves {self.model_name!r} version "
                    f"{version}: {exc.details()}"
                ) from None
            raise self._rpc_failure("Predict", exc) from None
        try:
            scores = PR.probabilities(resp, n)
        except ValueError as exc:
            raise ModelServerError(
                f"model {self.model_name!r} version {version} signature "
                f"{req.model_spec.signature_name!r}: {exc}") from None
        return RankResponse(scores, str(resp.model_spec.version.value or version), cold, degraded,
                            fallbacks)

    def _rpc_failure(self, method: str, exc: grpc.RpcError) -> ModelServerError:
        code = exc.code()
        msg = (f"{method} to model server {self.target} for model {self.model_name!r} failed: "
               f"{code.name if code else 'UNKNOWN'}: {exc.details()}")
        if code in _UNAVAILABLE_CODES:
            return ModelServerUnavailable(msg)
        return ModelServerError(msg)


class _VersionGone(Exception):
    pass
