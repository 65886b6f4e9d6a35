"""The ranker's TF Serving client side: which version is served and which signature to call.

* :meth:`ModelServerClientMixin.model_version`: the highest AVAILABLE version
  (``GetModelStatus``). Only the first call waits for the server: after that the cached answer
  is returned at once, and once it is ``version_refresh_s`` old the server is asked again on a
  background thread (stale-while-revalidate), so no request pays ``GetModelStatus``.
* :meth:`ModelServerClientMixin._raw_inputs_of`: the ``predict_raw`` inputs of a served version
  (``GetModelMetadata``, asked once per version), or None to use ``serving_default``.
* gRPC failures map to :class:`~serving.ranker_errors.ModelServerUnavailable` (outage codes) or
  :class:`~serving.ranker_errors.ModelServerError` (contract mismatch).

:class:`ModelServerClientMixin` is one part of :class:`serving.ranker.Ranker` (whose constructor
sets the stubs and attributes declared here).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving import predict_request as PR
from serving.ranker_errors import ModelServerError, ModelServerUnavailable, _WouldBlock

log = logging.getLogger(__name__)

SERVING_SIGNATURE = PR.SERVING_SIGNATURE

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


@dataclass
class _VersionCache:
    """The served version as last asked: ``next_ask_at`` (monotonic) is when it goes stale;
    ``refreshing``: a background ask is in flight."""

    version: Optional[int] = None
    next_ask_at: float = field(default=-1e18)
    refreshing: bool = False


class ModelServerClientMixin:
    """Asks the model server for the served version and its signatures."""

    target: str
    model_name: str
    timeout_s: float
    version_refresh_s: float
    use_raw_signature: bool
    _metadata: Any
    _predict: Any
    _status: Any
    _version: _VersionCache
    _version_lock: threading.Lock
    _closed: bool
    _raw_inputs: Dict[int, Optional[Dict[str, int]]]

    def model_version(self, refresh: bool = False, cached_only: bool = False) -> int:
        """The highest AVAILABLE version of the model.

        Once known, the cached version is returned at once. When it is ``version_refresh_s``
        old, this call also starts one background ``GetModelStatus`` (stale-while-revalidate);
        its answer serves the calls after it. If the server fails that ask, the cached version
        stays and the next ask waits another ``version_refresh_s``: a version unloaded
        meanwhile shows up as the Predict's NOT_FOUND, and the caller asks with ``refresh``.
        A closed ranker starts no background ask.

        Args:
            refresh: ask the server now and wait for its answer.
            cached_only: never ask before the first answer: raise ``_WouldBlock`` instead.

        Raises:
            ModelServerUnavailable: if the server cannot be asked or serves no version.
        """
        if not refresh:
            with self._version_lock:
                cached = self._version
                stale = (time.monotonic() >= cached.next_ask_at and not cached.refreshing
                         and not self._closed)
                if cached.version is not None and stale:
                    cached.refreshing = True
            if cached.version is not None:
                if stale:
                    threading.Thread(target=self._refresh_version, name="limaml-version-refresh",
                                     daemon=True).start()
                return cached.version
            if cached_only:
                raise _WouldBlock("the served version is not known yet")
        return self._ask_version()

    @property
    def cached_version(self) -> Optional[int]:
        """The served version as last asked (None before the first answer); never asks."""
        return self._version.version

    def _ask_version(self) -> int:
        """Asks the server for its highest AVAILABLE version and caches the answer."""
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
            self._version = _VersionCache(version, time.monotonic() + self.version_refresh_s)
        return version

    def _refresh_version(self) -> None:
        """The background ask of :meth:`model_version`; on failure keeps the cached version
        until ``version_refresh_s`` from now."""
        try:
            self._ask_version()
        except Exception as exc:  # noqa: BLE001 - a failed refresh keeps the cached version
            if self._closed:  # the channel was closed under the ask: nothing to report
                return
            with self._version_lock:
                cached = self._version
                self._version = _VersionCache(cached.version,
                                              time.monotonic() + self.version_refresh_s)
            log.warning("refreshing the served version of %r failed; still using version %s "
                        "until the next try in %.1f s: %s", self.model_name, cached.version,
                        self.version_refresh_s, exc)

    def _raw_inputs_of(self, version: int, cached_only: bool = False) -> Optional[Dict[str, int]]:
        """``predict_raw`` inputs of a served version (None: use ``serving_default``);
        ``cached_only``: raise ``_WouldBlock`` rather than ask the server."""
        if not self.use_raw_signature:
            return None
        if version in self._raw_inputs:
            return self._raw_inputs[version]
        if cached_only:
            raise _WouldBlock(f"the signatures of version {version} are to be asked")
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

    def _rpc_failure(self, method: str, exc: grpc.RpcError) -> ModelServerError:
        code = exc.code()
        msg = (f"{method} to model server {self.target} for model {self.model_name!r} failed: "
               f"{code.name if code else 'UNKNOWN'}: {exc.details()}")
        if code in _UNAVAILABLE_CODES:
            return ModelServerUnavailable(msg)
        return ModelServerError(msg)
