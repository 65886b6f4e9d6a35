"""Online ranking: a user's meta embedding + candidate features -> one TF Serving Predict.

For a request ``(user_id, candidates)`` the ranker (DESIGN.md sections 1 and 5):

1. validates the request (types from ``schema.features.CANONICAL_COLUMNS``; missing,
   unknown or ill-typed features and too many candidates raise ``InvalidRequest`` naming the
   field), before any network call;
2. finds the model version being served (``GetModelStatus``, highest AVAILABLE version; asked
   again in the background once the cached answer is ``version_refresh_s`` old);
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

Modules (one concept each; this one holds the scoring path and composes the rest):
:mod:`serving.ranker_errors` (errors), :mod:`serving.ranker_types` (the lookup protocol and
:class:`RankResponse`), :mod:`serving.ranker_validation` (request validation),
:mod:`serving.ranker_items` (candidate columns and the item cache),
:mod:`serving.ranker_model_client` (served version and signatures), and
:mod:`serving.ranker_embeddings` (the user's embeddings for a request).
"""
from __future__ import annotations

import itertools
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from schema import features as F
from serving import multi_block as MB
from serving import predict_request as PR
from serving.item_cache import ItemCache
from serving.predict_batcher import PredictBatcher
from serving.predict_wire import encode_rows
from serving.ranker_embeddings import EmbeddingsMixin
from serving.ranker_errors import (
    EmbeddingLookupError,
    InvalidRequest,
    ModelServerError,
    ModelServerUnavailable,
    _VersionGone,
    _WouldBlock,
)
from serving.ranker_errors import RankerError as RankerError
from serving.ranker_items import CandidateColumnsMixin
from serving.ranker_model_client import _AVAILABLE as _AVAILABLE
from serving.ranker_model_client import _UNAVAILABLE_CODES as _UNAVAILABLE_CODES
from serving.ranker_model_client import ModelServerClientMixin, _VersionCache
from serving.ranker_types import EmbeddingLookup, PredictJob, RankResponse
from serving.ranker_types import LookupResultLike as LookupResultLike
from serving.ranker_validation import RequestValidationMixin
from serving.tf_example import (
    DEFAULT_REQUIRED_CANDIDATE_FEATURES,
    SERVING_FEATURE_KINDS,
    FeatureError,
    check_value,
    serialize_candidates,
)

SERVING_SIGNATURE = PR.SERVING_SIGNATURE
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
WARM_UP_CANDIDATES = 16  # the second warm-up request's candidates (first: one)
RAW_SIGNATURE = PR.RAW_SIGNATURE
EXAMPLES_INPUT = PR.EXAMPLES_INPUT
PROBABILITIES_OUTPUT = PR.PROBABILITIES_OUTPUT


class Ranker(RequestValidationMixin, CandidateColumnsMixin, ModelServerClientMixin, EmbeddingsMixin):
    """Scores candidates for a user with the served global block.

    Args:
        model_channel_target: gRPC target of TF Serving (or the stand-in), e.g. ``"host:8500"``.
        model_name: the served model's name.
        embedding_lookup: object with ``lookup(user_ids, model_version) -> LookupResult``.
        timeout_s: deadline of each gRPC call to the model server.
        max_candidates: most candidates per request.
        required_features: features every candidate must carry (default: item id and item
            features from ``schema.features``).
        version_refresh_s: how old the cached served version may get before the next request
            asks again, in the background (requests never wait for it after the first).
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
        genre_fallback: a multi-block model's genre slot when the user × genre row is missing
            (:func:`serving.multi_block.served_genre_fallback` of the pushed version).
        batch_requests: concurrent ``predict_raw`` requests share one Predict: across threads
            calling :meth:`rank` (:mod:`serving.predict_batcher`), and in the HTTP service on
            its event loop (:meth:`prepare`, :meth:`async_batcher`); False: one Predict per
            request.
        batch_window_ms: with ``batch_requests``, how long the request that starts a Predict
            waits for others first (0: none; requests arriving during a Predict share the next).

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
        genre_fallback: str = "user",
        batch_requests: bool = False,
        batch_window_ms: float = 0.0,
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
        self.genre_fallback = MB.check_genre_fallback(genre_fallback)
        self.fallback_counts: Dict[str, int] = dict.fromkeys(MB.FALLBACKS, 0)
        self._fallback_lock = threading.Lock()
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else None
        self._channel_options = [("grpc.max_receive_message_length", int(max_message_bytes)),
                                 ("grpc.max_send_message_length", int(max_message_bytes))]
        self._channel = grpc.insecure_channel(model_channel_target, options=self._channel_options)
        self._raw_inputs: Dict[int, Optional[Dict[str, int]]] = {}
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._status = model_service_pb2_grpc.ModelServiceStub(self._channel)
        if batch_window_ms < 0:
            raise ValueError(f"batch_window_ms={batch_window_ms}; must be >= 0")
        # concurrent predict_raw requests share one Predict (serving/predict_batcher.py)
        self._batcher = (PredictBatcher(self._predict.Predict, model_name, self.timeout_s,
                                        self._metadata, window_s=batch_window_ms / 1000.0)
                         if batch_requests else None)
        self._version = _VersionCache()
        self._version_lock = threading.Lock()
        self._closed = False
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
        return self.prepare(user_id, candidates, user_features=user_features, defer=False)

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
        return self.prepare(user_id, item_ids=item_ids, user_features=user_features, defer=False)

    def prepare(
        self,
        user_id: str,
        candidates: Optional[Sequence[Mapping[str, Any]]] = None,
        item_ids: Optional[Sequence[str]] = None,
        user_features: Optional[Mapping[str, Any]] = None,
        defer: bool = True,
        in_memory_only: bool = False,
    ) -> Union[RankResponse, PredictJob]:
        """:meth:`rank` (``candidates``) or :meth:`rank_items` (``item_ids``), up to the Predict.

        With ``defer`` and the cross-request batcher on, a request for ``predict_raw`` stops
        before its Predict and comes back as a :class:`PredictJob` (validated, embeddings
        looked up at the pinned version, rows encoded) for an asynchronous batcher to send
        (:mod:`serving.async_predict_batcher`; :meth:`job_failure` maps its errors). Any other
        request is answered here.

        With ``in_memory_only`` it never blocks (for an event loop): it raises ``_WouldBlock``
        as soon as it would ask the model server (a stale served version, unknown signatures)
        or the embedding store (a user not in the lookup's cache), or would send the Predict
        itself; prepare such a request again without it, on a worker thread.

        Returns:
            The job, or the finished response.

        Raises:
            As :meth:`rank` and :meth:`rank_items`; ``_WouldBlock`` (see above).
        """
        if in_memory_only and (self.multi_block or not defer or not self.batches_requests):
            raise _WouldBlock("only a single-block predict_raw job is prepared in memory")
        if item_ids is None:
            columns = self.validated_columns(user_id, candidates, user_features)
            return self._rank_columns(user_id, columns, len(candidates), user_features, defer,
                                      in_memory_only)
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
        return self._rank_columns(user_id, columns, len(item_ids), user_features, defer,
                                  in_memory_only)

    @property
    def batches_requests(self) -> bool:
        """Whether concurrent ``predict_raw`` requests share Predicts (``batch_requests``)."""
        return self._batcher is not None

    def job_failure(self, job: PredictJob, exc: Exception) -> Exception:
        """The ranker error for a failed Predict of ``job``: ``ModelServerUnavailable`` or
        ``ModelServerError`` as :meth:`rank` raises them, or ``_VersionGone`` when the pinned
        version was unloaded meanwhile (refresh the version and rank the request again)."""
        if isinstance(exc, grpc.RpcError):
            return self._predict_failure(job.version, exc)
        if isinstance(exc, ValueError):
            return ModelServerError(f"model {self.model_name!r} version {job.version} signature "
                                    f"{PR.RAW_SIGNATURE!r}: {exc}")
        return exc

    def async_batcher(self, max_rows: int = 8192):
        """A :class:`~serving.async_predict_batcher.AsyncPredictBatcher` on a new ``grpc.aio``
        channel to the model server, for the event loop this is called on (the channel is
        bound to it); None when this ranker does not batch requests."""
        if not self.batches_requests:
            return None
        from serving.async_predict_batcher import AsyncPredictBatcher

        channel = grpc.aio.insecure_channel(self.target, options=self._channel_options)
        predict = channel.unary_unary(  # the request goes as the bytes the batcher joined
            PREDICT_METHOD, request_serializer=None,
            response_deserializer=predict_pb2.PredictResponse.FromString)
        return AsyncPredictBatcher(predict, self.model_name, self.timeout_s,
                                   self._metadata, max_rows=max_rows, close=channel.close,
                                   ready=channel.channel_ready)

    def warm_up(self, candidates: int = WARM_UP_CANDIDATES) -> Optional[RankResponse]:
        """Sends requests through the fast path (the cache's first items, blank user
        features), so the model server's first calls of the served version are not paid by
        clients under their deadline: one of a single candidate (function and table
        initialisation, seconds on a busy machine), then one of ``candidates`` (TF's first
        multi-row call, ~20 ms more on the stand-in, when its parallel kernels start).

        Returns:
            The last warm-up response, or None without an item cache.

        Raises:
            Whatever :meth:`rank_items` raises.
        """
        warm = self._warm_up_items(candidates)
        if warm is None:
            return None
        items, blank = warm
        response = self.rank_items("warm-up", items[:1], blank)
        if len(items) > 1:
            response = self.rank_items("warm-up", items, blank)
        return response

    def warm_up_job(self) -> Optional[PredictJob]:
        """A one-candidate ``predict_raw`` job (the item cache's first item, blank user
        features, as :meth:`warm_up` sends) for the event loop's batcher to send at start-up, so
        the first client's request does not pay the loop's first gRPC call (~5-25 ms here).

        Returns:
            The job; None without an item cache, without request batching, or when the served
            version is not served through ``predict_raw``.

        Raises:
            Whatever :meth:`prepare` raises (model server or store unreachable, ...). It may
            block (status, signatures, embedding lookup): call it on a worker thread.
        """
        warm = self._warm_up_items(1) if self.batches_requests else None
        if warm is None:
            return None
        step = self.prepare("warm-up", item_ids=warm[0], user_features=warm[1])
        return step if isinstance(step, PredictJob) else None

    def _warm_up_items(self, count: int) -> Optional[Tuple[List[str], Dict[str, str]]]:
        """The item cache's first ``count`` ids (at least 1, at most ``max_candidates``) and
        blank user features; None without an item cache."""
        cache = self.item_cache
        if cache is None or not len(cache):
            return None
        blank = {name: "" for name in self._user_allowed if SERVING_FEATURE_KINDS[name] == "str"}
        count = max(1, min(int(count), self.max_candidates))
        return list(itertools.islice(iter(cache._index), count)), blank

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
                      user_features: Optional[Mapping[str, Any]], defer: bool = False,
                      in_memory_only: bool = False) -> Union[RankResponse, PredictJob]:
        self._fill_items(columns, n)
        version = self.model_version(cached_only=in_memory_only)
        if in_memory_only:
            return self._rank_at(version, user_id, columns, n, user_features, defer, True)
        try:
            return self._rank_at(version, user_id, columns, n, user_features, defer)
        except _VersionGone:
            # The pinned version was unloaded between status and predict (a new push): refresh
            # once and redo the lookup so the embedding matches the new version.
            version = self.model_version(refresh=True)
            try:
                return self._rank_at(version, user_id, columns, n, user_features, defer)
            except _VersionGone as exc:
                raise ModelServerUnavailable(str(exc)) from None

    def close(self) -> None:
        """Closes the gRPC channel (no background status ask starts after this)."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> "Ranker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    def _raw_columns(self, inputs: Mapping[str, int], user_id: str, columns: Dict[str, list],
                     n: int, user_features: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        """Columns for ``predict_raw``; a value the request lacks is sent as ``""`` / ``0``.

        The exported raw features are ``VarLenFeature``s, and the Transform densifies each
        with ``""`` (strings) or ``0`` (numbers) (``trainer.preprocessing._dense``), so a row
        without a value and a row with ``""`` / ``0`` get the same transformed features: a
        request without user features stays on this path (and on the cross-request batcher)
        with the scores ``serving_default`` gives when the ``tf.Example`` omits them.
        """
        out = {}
        shared = {**(user_features or {}), F.USER_ID: user_id}
        for name, dtype in inputs.items():
            is_str = dtype == types_pb2.DT_STRING
            absent: Any = b"" if is_str else 0
            value = shared.get(name)
            if value is not None:
                out[name] = [value.encode("utf-8")] * n if is_str else np.full(n, value)
                continue
            col = columns.get(name)
            if col is None:
                out[name] = [absent] * n if is_str else np.zeros(n)
                continue
            if isinstance(col, np.ndarray) and col.dtype != object:
                out[name] = col
                continue
            if is_str:
                try:  # plain strings (what JSON gives): encoded by one C-level map
                    out[name] = list(map(str.encode, col))
                except TypeError:  # None (absent) or bytes among them
                    out[name] = [absent if v is None else v.encode("utf-8") if isinstance(v, str)
                                 else v for v in col]
            else:
                out[name] = np.asarray([absent if v is None else v for v in col])
        return out

    def _predict_failure(self, version: int, exc: grpc.RpcError) -> Exception:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            # TF Serving: "Servable not found for request: Specific(name, version)"
            return _VersionGone(
                f"model server {self.target} no longer serves {self.model_name!r} version "
                f"{version}: {exc.details()}")
        return self._rpc_failure("Predict", exc)

    def _rank_at(self, version: int, user_id: str, columns: Dict[str, list], n: int,
                 user_features: Optional[Mapping[str, Any]], defer: bool = False,
                 in_memory_only: bool = False) -> Union[RankResponse, PredictJob]:
        fallbacks = None
        if self.multi_block:
            emb, cold, degraded, fallbacks = self._candidate_embeddings(version, user_id, columns, n)
        else:
            emb, cold, degraded = self._embedding(user_id, version, in_memory_only)
        inputs = self._raw_inputs_of(version, in_memory_only)
        if in_memory_only and not inputs:
            raise _WouldBlock(f"version {version} is served through {SERVING_SIGNATURE}")
        raw = self._raw_columns(inputs, user_id, columns, n, user_features) if inputs else None
        if raw is not None and self._batcher is not None:
            if defer:  # encoded now, so that batching it later is a join (serving/predict_wire.py)
                return PredictJob(version, dict(inputs), encode_rows(inputs, raw, emb, n), cold,
                                  degraded, fallbacks)
            try:
                scores, answered = self._batcher.predict(version, inputs, raw, emb, n)
            except grpc.RpcError as exc:
                raise self._predict_failure(version, exc) from None
            except ValueError as exc:
                raise ModelServerError(
                    f"model {self.model_name!r} version {version} signature "
                    f"{PR.RAW_SIGNATURE!r}: {exc}") from None
            return RankResponse(scores, str(answered), cold, degraded, fallbacks)
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
            raise self._predict_failure(version, exc) from None
        try:
            scores = PR.probabilities(resp, n)
        except ValueError as exc:
            raise ModelServerError(
                f"model {self.model_name!r} version {version} signature "
                f"{req.model_spec.signature_name!r}: {exc}") from None
        return RankResponse(scores, str(resp.model_spec.version.value or version), cold, degraded,
                            fallbacks)
