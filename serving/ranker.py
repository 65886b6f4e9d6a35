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
   embeddings of version v) with every candidate as a serialized ``tf.Example`` (raw features +
   ``meta_embedding``) in input ``examples`` of signature ``serving_default``, under a deadline;
5. returns the ``probabilities`` in candidate order.

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
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from schema import features as F
from serving.tf_example import (
    DEFAULT_REQUIRED_CANDIDATE_FEATURES,
    SERVING_FEATURE_KINDS,
    FeatureError,
    serialize_candidates,
    validate_features,
)

log = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
EXAMPLES_INPUT = "examples"
PROBABILITIES_OUTPUT = "probabilities"

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
    """The embedding lookup failed instead of falling back to the cold-start default."""


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

    def to_json(self) -> Dict[str, Any]:
        """The response as a JSON-ready dict."""
        return {"scores": list(self.scores), "model_version": self.model_version,
                "cold_start": self.cold_start, "degraded": self.degraded}


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
        self._channel = grpc.insecure_channel(
            model_channel_target,
            options=[("grpc.max_receive_message_length", 64 << 20),
                     ("grpc.max_send_message_length", 64 << 20)],
        )
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._status = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._version = _VersionCache()
        self._version_lock = threading.Lock()
        self._candidate_allowed = tuple(f for f in SERVING_FEATURE_KINDS if f != F.USER_ID)
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
        version = self.model_version()
        try:
            return self._rank_at(version, user_id, candidates, user_features)
        except _VersionGone:
            # The pinned version was unloaded between status and predict (a new push): refresh
            # once and redo the lookup so the embedding matches the new version.
            version = self.model_version(refresh=True)
            try:
                return self._rank_at(version, user_id, candidates, user_features)
            except _VersionGone as exc:
                raise ModelServerUnavailable(str(exc)) from None

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
        if not isinstance(user_id, str) or not user_id:
            raise InvalidRequest(
                "user_id", f"expected a non-empty string, got {type(user_id).__name__} {user_id!r}"
            )
        if not isinstance(candidates, (list, tuple)):
            raise InvalidRequest(
                "candidates", f"expected a list of feature objects, got {type(candidates).__name__}"
            )
        if not candidates:
            raise InvalidRequest("candidates", "is empty; send 1 to "
                                 f"{self.max_candidates} candidates")
        if len(candidates) > self.max_candidates:
            raise InvalidRequest(
                "candidates",
                f"{len(candidates)} candidates is more than max_candidates={self.max_candidates};"
                " split the request",
            )
        try:
            if user_features is not None:
                validate_features(user_features, "user_features", allowed=self._user_allowed)
            shared = {k for k, v in (user_features or {}).items() if v is not None}
            for i, cand in enumerate(candidates):
                validate_features(cand, f"candidates[{i}]", required=self.required_features,
                                  allowed=self._candidate_allowed)
                for name in shared.intersection(cand):
                    if cand[name] is not None:
                        raise FeatureError(
                            f"candidates[{i}].{name}",
                            "is also given in user_features; send it in one place only",
                        )
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
            resp = self._status.GetModelStatus(req, timeout=self.timeout_s)
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
                f"{type(exc).__name__}: {exc}"
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

    def _rank_at(self, version: int, user_id, candidates, user_features) -> RankResponse:
        emb, cold, degraded = self._embedding(user_id, version)
        examples = serialize_candidates(user_id, candidates, emb, user_features)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = self.model_name
        req.model_spec.version.value = version
        req.model_spec.signature_name = SERVING_SIGNATURE
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(examples))]
            ),
            string_val=examples,
        )
        req.inputs[EXAMPLES_INPUT].CopyFrom(tensor)
        req.output_filter.append(PROBABILITIES_OUTPUT)
        try:
            resp = self._predict.Predict(req, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                # TF Serving: "Servable not found for request: Specific(name, version)"
                raise _VersionGone(
                    f"model server {self.target} no longer serves {self.model_name!r} version "
                    f"{version}: {exc.details()}"
                ) from None
            raise self._rpc_failure("Predict", exc) from None
        scores = _probabilities(resp, len(examples), self.model_name, version)
        return RankResponse(scores, str(resp.model_spec.version.value or version), cold, degraded)

    def _rpc_failure(self, method: str, exc: grpc.RpcError) -> ModelServerError:
        code = exc.code()
        msg = (f"{method} to model server {self.target} for model {self.model_name!r} failed: "
               f"{code.name if code else 'UNKNOWN'}: {exc.details()}")
        if code in _UNAVAILABLE_CODES:
            return ModelServerUnavailable(msg)
        return ModelServerError(msg)


class _VersionGone(Exception):
    pass


def _probabilities(resp, n: int, model_name: str, version: int) -> List[float]:
    if PROBABILITIES_OUTPUT not in resp.outputs:
        raise ModelServerError(
            f"model {model_name!r} version {version} returned outputs {sorted(resp.outputs)}; "
            f"expected {PROBABILITIES_OUTPUT!r} from signature {SERVING_SIGNATURE!r}"
        )
    proto = resp.outputs[PROBABILITIES_OUTPUT]
    if proto.float_val:
        values = np.asarray(proto.float_val, dtype=np.float32)
    else:
        from tensorflow import make_ndarray  # tensor_content or other encodings

        values = np.asarray(make_ndarray(proto), dtype=np.float32)
    values = values.reshape(-1)
    if values.shape[0] != n:
        raise ModelServerError(
            f"model {model_name!r} version {version} returned {values.shape[0]} probabilities "
            f"for {n} candidates; the signature must return one per example"
        )
    return [float(v) for v in values]
