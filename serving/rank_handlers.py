"""The ranker service's request handling, independent of HTTP: body in, ``(status, JSON)`` out.

* :func:`parse_rank_body`: a ``POST /v1/rank`` body -> its JSON object (400 for anything else).
* :func:`handle_rank_body`: ranks one body with the :class:`~serving.ranker.Ranker` and maps
  every ranker error to its status and short code (the table in :mod:`serving.ranker_service`);
  5xx messages are generic, the details go to the log. It never raises.
* :func:`prepare_rank_body` and :func:`finish_rank_job`: the same in two steps, for a batching
  service: the blocking part (parse, validate, look up, build columns) on a worker thread,
  then the Predict on the event loop (:mod:`serving.async_predict_batcher`); same answers.
* :func:`handle_ready`: the ``/readyz`` answer.

Used by the ASGI app (:mod:`serving.ranker_app`).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple, Union

import orjson

from embeddings.record import VersionNotCommittedError
from serving.ranker import Ranker
from serving.ranker_errors import (
    EmbeddingLookupError,
    InvalidRequest,
    ModelServerError,
    ModelServerUnavailable,
    _VersionGone,
    _WouldBlock,
)
from serving.ranker_types import PredictJob, RankResponse

log = logging.getLogger(__name__)

_REQUEST_KEYS = ("user_id", "candidates", "item_ids", "user_features")


class _HttpError(Exception):
    def __init__(self, status: int, message: str, field: Optional[str] = None,
                 code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code


def _error(status: int, code: str, message: str, field: Optional[str] = None
           ) -> Tuple[int, Dict[str, Any]]:
    body: Dict[str, Any] = {"error": message, "code": code}
    if field is not None or status == 400:
        body["field"] = field
    return status, body


def _embedding_failure(exc: EmbeddingLookupError) -> Tuple[int, Dict[str, Any]]:
    cause = exc.__cause__
    version = getattr(exc, "model_version", None)
    if isinstance(cause, VersionNotCommittedError):
        return _error(503, "embeddings_not_committed",
                      f"model version {version!r} is not committed in the meta embeddings; run "
                      "meta-embedding generation for it or serve a version that has embeddings")
    return _error(503, "embeddings_unavailable",
                  f"the meta embeddings of model version {version!r} cannot be read now")


def _public_degraded(degraded: Optional[str]) -> Optional[str]:
    """A response's ``degraded`` without store names (the full reason is logged)."""
    if degraded is None:
        return None
    log.info("degraded answer: %s", degraded)
    if "timed out" in degraded or "saturated" in degraded:
        return "embedding store too slow; cold-start default served"
    if "cold-start" in degraded and "fallback" in degraded:
        return "cold-start default unknown; fallback vector served"
    return "embedding store unavailable; cold-start default served"


def parse_rank_body(body: bytes) -> Dict[str, Any]:
    """Decodes a ``/v1/rank`` body into its JSON object.

    Parsed by orjson (~4x faster than ``json`` on a 100-candidate body); a body orjson
    refuses (it is strict: no ``NaN``/``Infinity``, no lone surrogates) is parsed again by
    ``json``, so that a value such as ``1e400`` (infinity) is refused by the feature checks,
    which name its field.

    Raises:
        _HttpError: 400 for anything that is not a UTF-8 JSON object of the allowed keys
            (invalid Unicode, nesting deeper than Python's recursion limit included).
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = _stdlib_json(body)
    if not isinstance(payload, dict):
        raise _HttpError(400, f"body must be a JSON object, got {type(payload).__name__}",
                         "body")
    extra = sorted(set(payload) - set(_REQUEST_KEYS))
    if extra:
        raise _HttpError(400, f"unknown request field(s) {extra}; allowed: "
                              f"{list(_REQUEST_KEYS)}", extra[0])
    if "user_id" not in payload:
        raise _HttpError(400, "user_id: missing", "user_id")
    has_c, has_i = "candidates" in payload, "item_ids" in payload
    if has_c == has_i:
        raise _HttpError(400, "candidates: missing (send candidates or item_ids, one of them)"
                         if not has_c else "send candidates or item_ids, not both", "candidates")
    return payload


def _stdlib_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _HttpError(400, f"body is not valid UTF-8 JSON: {exc}", "body") from None
    except RecursionError:
        raise _HttpError(400, "body is nested too deeply", "body") from None


def handle_rank_body(ranker: Ranker, body: bytes) -> Tuple[int, Dict[str, Any]]:
    """Answers one ``/v1/rank`` body: ``(HTTP status, JSON object)``; never raises."""
    try:
        payload = parse_rank_body(body)
        if "item_ids" in payload:
            resp = ranker.rank_items(payload["user_id"], payload["item_ids"],
                                     payload.get("user_features"))
        else:
            resp = ranker.rank(payload["user_id"], payload["candidates"],
                               payload.get("user_features"))
        return _ok(resp)
    except Exception as exc:  # noqa: BLE001 - every failure becomes its status
        return _failure(exc)


WOULD_BLOCK = object()
"""What :func:`prepare_rank_body` returns ``in_memory_only`` when the body needs a blocking call."""


def prepare_rank_body(ranker: Ranker, body: bytes, in_memory_only: bool = False
                      ) -> Union[PredictJob, Tuple[int, Dict[str, Any]], object]:
    """A ``/v1/rank`` body up to its Predict.

    Args:
        ranker: the ranker.
        body: the request body.
        in_memory_only: never block (on an event loop): return :data:`WOULD_BLOCK` where the
            served version, the signature or the user's embedding is not in memory (then call
            it again without, on a worker thread).

    Returns:
        The :class:`PredictJob` for :func:`finish_rank_job` when the request goes through the
        cross-request batcher, else the finished ``(HTTP status, JSON object)``, or
        :data:`WOULD_BLOCK`; never raises.
    """
    try:
        payload = parse_rank_body(body)
        step = ranker.prepare(payload["user_id"], payload.get("candidates"),
                              payload.get("item_ids"), payload.get("user_features"),
                              in_memory_only=in_memory_only)
        return step if isinstance(step, PredictJob) else _ok(step)
    except _WouldBlock:
        return WOULD_BLOCK
    except Exception as exc:  # noqa: BLE001 - every failure becomes its status
        return _failure(exc)


async def finish_rank_job(ranker: Ranker, body: bytes, job: PredictJob, batcher: Any,
                          run_blocking: Callable[..., Awaitable[Any]]
                          ) -> Tuple[int, Dict[str, Any]]:
    """Sends a prepared job through the event loop's batcher and answers it; never raises.

    Args:
        ranker: the ranker that prepared ``job``.
        body: the request body (prepared again, with a refreshed version, if the job's version
            was unloaded meanwhile).
        job: from :func:`prepare_rank_body`.
        batcher: the loop's :class:`~serving.async_predict_batcher.AsyncPredictBatcher`.
        run_blocking: ``await run_blocking(fn, *args)`` runs ``fn`` on a worker thread.
    """
    try:
        try:
            scores, answered = await batcher.predict(job)
        except Exception as exc:  # noqa: BLE001 - mapped to the ranker's errors
            raise ranker.job_failure(job, exc) from None
        return _ok(job.response(scores, answered))
    except _VersionGone:
        # A new push unloaded the pinned version between status and Predict: the blocking path
        # refreshes the version, looks the embedding up again for it and sends once more.
        return await run_blocking(_rank_refreshed, ranker, body)
    except Exception as exc:  # noqa: BLE001 - every failure becomes its status
        return _failure(exc)


def _rank_refreshed(ranker: Ranker, body: bytes) -> Tuple[int, Dict[str, Any]]:
    try:
        ranker.model_version(refresh=True)
    except Exception as exc:  # noqa: BLE001
        return _failure(exc)
    return handle_rank_body(ranker, body)


def _ok(resp: RankResponse) -> Tuple[int, Dict[str, Any]]:
    out = resp.to_json()
    out["degraded"] = _public_degraded(out["degraded"])
    return 200, out


def _failure(exc: Exception) -> Tuple[int, Dict[str, Any]]:
    """The status and body of a failed request (details of 5xx go to the log only)."""
    if isinstance(exc, _HttpError):
        return _error(exc.status, exc.code, exc.message, exc.field)
    if isinstance(exc, InvalidRequest):
        return _error(400, "bad_request", _printable(str(exc)), exc.field)
    if isinstance(exc, EmbeddingLookupError):
        log.warning("ranker service: %s", exc)
        return _embedding_failure(exc)
    if isinstance(exc, ModelServerUnavailable):
        log.warning("ranker service: %s", exc)
        return _error(503, "model_unavailable", "the model server is unavailable")
    if isinstance(exc, ModelServerError):
        log.error("ranker service: %s", exc)
        return _error(502, "model_error", "the model server rejected the request")
    if isinstance(exc, RecursionError):
        return _error(400, "bad_request", "request is nested too deeply", "body")
    log.error("ranker service: unexpected error", exc_info=exc)
    return _error(500, "internal", "internal error")


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def handle_ready(ranker: Ranker) -> Tuple[int, Dict[str, Any]]:
    """``/readyz``: 200 when the served version and its embeddings are reachable, else 503."""
    try:
        version = ranker.readiness()
    except EmbeddingLookupError as exc:
        log.warning("readiness: %s", exc)
        status, body = _embedding_failure(exc)
        return status, {"status": "unavailable", **body}
    except ModelServerError as exc:
        log.warning("readiness: %s", exc)
        return 503, {"status": "unavailable", "code": "model_unavailable",
                     "error": "the model server is unavailable"}
    except Exception:  # noqa: BLE001
        log.exception("readiness check failed")
        return 503, {"status": "unavailable", "code": "internal", "error": "internal error"}
    return 200, {"status": "ready", "model_version": str(version)}
