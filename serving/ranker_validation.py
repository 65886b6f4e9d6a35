"""Validation of ranking requests, before any network call.

Types come from ``schema.features.CANONICAL_COLUMNS`` (:mod:`serving.tf_example`); a missing,
unknown or ill-typed feature, an empty list, or more than ``max_candidates`` candidates raises
:class:`~serving.ranker_errors.InvalidRequest` naming the field.

:class:`RequestValidationMixin` is one part of :class:`serving.ranker.Ranker` (whose constructor
sets the attributes declared here).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from serving.ranker_errors import InvalidRequest
from serving.tf_example import FeatureError, check_value, validate_features


class RequestValidationMixin:
    """Checks a ranking request (user id, candidates or item ids, user features)."""

    max_candidates: int
    _candidate_required: Tuple[str, ...]
    _candidate_allowed: Tuple[str, ...]
    _user_allowed: Tuple[str, ...]

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
