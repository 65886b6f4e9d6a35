"""Validation of ranking requests, before any network call.

Types come from ``schema.features.CANONICAL_COLUMNS`` (:mod:`serving.tf_example`); a missing,
unknown or ill-typed feature, an empty list, or more than ``max_candidates`` candidates raises
:class:`~serving.ranker_errors.InvalidRequest` naming the field.

:class:`RequestValidationMixin` is one part of :class:`serving.ranker.Ranker` (whose constructor
sets the attributes declared here).
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from serving.ranker_errors import InvalidRequest
from serving.tf_example import (
    _INT64_MAX,
    _INT64_MIN,
    SERVING_FEATURE_KINDS,
    FeatureError,
    check_value,
    validate_features,
)


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
        self._validate_candidates(candidates, user_features)

    def _validate_candidates(self, candidates: Sequence[Any],
                             user_features: Optional[Mapping[str, Any]]) -> None:
        """Candidate by candidate; raises InvalidRequest naming the first bad field."""
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

    def validated_columns(
        self,
        user_id: Any,
        candidates: Any,
        user_features: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, list]:
        """Checks a request as :meth:`validate` does and returns the candidates as columns.

        A request of plain JSON values (dicts, str, int, float) is checked column by column;
        anything else, and any request that fails a column check, goes through
        the per-candidate check of :meth:`validate`, which names the first bad field. Both
        accept the same requests.

        Returns:
            Feature name -> ``[n]`` values (None where a candidate lacks the feature).

        Raises:
            InvalidRequest: naming the first bad field.
        """
        self._validate_common(user_id, candidates, "candidates", user_features)
        columns = self._plain_columns(candidates, user_features)
        if columns is None:
            self._validate_candidates(candidates, user_features)
            columns = self._candidate_columns(candidates)
        return columns

    def _plain_columns(self, candidates: Sequence[Any],
                       user_features: Optional[Mapping[str, Any]]) -> Optional[Dict[str, list]]:
        """Columns of candidates that pass every check, or None (the per-candidate check decides)."""
        if set(map(type, candidates)) != _DICT:
            return None
        names = set().union(*candidates)
        if not names.issubset(self._candidate_allowed):
            return None
        columns = {name: [c.get(name) for c in candidates] for name in names}
        for name in self._candidate_required:
            col = columns.get(name)
            if col is None or any(map(_IS_NONE, col)):
                return None
        shared = {k for k, v in (user_features or {}).items() if v is not None}
        for name, col in columns.items():
            values = [v for v in col if v is not None]
            if name in shared and values:
                return None
            if not _plain_values_fit(SERVING_FEATURE_KINDS[name], values):
                return None
        return columns

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


_DICT, _STR, _INT, _NUMBER = {dict}, {str}, {int}, {int, float}
_IS_NONE = functools.partial(operator.is_, None)  # _IS_NONE(v): v is None, as a C call


def _plain_values_fit(kind: str, values: List[Any]) -> bool:
    """Whether every value is a plain Python value that ``check_value`` accepts for ``kind``."""
    try:
        if kind == "str":
            if not set(map(type, values)) <= _STR:
                return False
            "".join(values).encode("utf-8")  # a lone surrogate anywhere fails
            return True
        if kind == "int64":
            return set(map(type, values)) <= _INT and (
                not values or (_INT64_MIN <= min(values) and max(values) <= _INT64_MAX))
        if kind == "float64":
            return set(map(type, values)) <= _NUMBER and all(map(math.isfinite, values))
    except (UnicodeEncodeError, OverflowError):
        return False
    return False
