"""Builds the serialized ``tf.Example`` inputs of the global block from raw feature dicts.

The served global block (DESIGN.md section 3) takes, in input ``examples`` of signature
``serving_default``, serialized ``tf.Example``s holding the raw features of one candidate plus
the user's meta embedding in the float list feature ``schema.features.META_EMBEDDING``.

This module validates raw feature dicts against the canonical feature kinds of
``schema.features.CANONICAL_COLUMNS`` and encodes them:

    kind      accepted Python values             tf.Example list
    str       str                                bytes_list (UTF-8)
    int64     int (not bool), within int64       int64_list
    float64   int or float (not bool), finite    float_list

Feature names come from ``schema.features``; nothing here hard-codes one.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2

from schema import features as F

# Features a client may send at serving time: the canonical columns except the targets.
SERVING_FEATURE_KINDS: Mapping[str, str] = {
    name: kind
    for name, kind in F.CANONICAL_COLUMNS.items()
    if name not in (F.LABEL, F.RATING)
}

# What every candidate must carry by default: the item key and the item features.
DEFAULT_REQUIRED_CANDIDATE_FEATURES: Sequence[str] = (F.ITEM_ID,) + tuple(F.ITEM_FEATURES)

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class FeatureError(ValueError):
    """A raw feature is missing, unknown or of the wrong type.

    Attributes:
        field: path of the offending field, e.g. ``"candidates[3].release_year"``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _kind_error(field: str, kind: str, value: Any) -> FeatureError:
    expected = {"str": "a string", "int64": "an integer", "float64": "a number"}[kind]
    return FeatureError(
        field, f"expected {expected} ({kind}), got {type(value).__name__} {value!r}"
    )


def check_value(field: str, kind: str, value: Any) -> None:
    """Checks that a raw value fits its canonical kind (see the module docstring).

    Args:
        field: path of the value, used in error messages.
        kind: canonical kind, ``"str"``, ``"int64"`` or ``"float64"``.
        value: the raw value.

    Raises:
        FeatureError: if the value does not match the kind.
        ValueError: if ``kind`` is not a known kind.
    """
    if kind == "str":
        if not isinstance(value, str):
            raise _kind_error(field, kind, value)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # e.g. a lone surrogate from JSON "\ud800"
            raise FeatureError(field, "is not valid Unicode (lone surrogate); send UTF-8 "
                                      "text") from None
    elif kind == "int64":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise _kind_error(field, kind, value)
        if not _INT64_MIN <= int(value) <= _INT64_MAX:
            raise FeatureError(field, f"value {value} does not fit in int64")
    elif kind == "float64":
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise _kind_error(field, kind, value)
        if not math.isfinite(float(value)):
            raise FeatureError(field, f"value {value!r} is not finite; send a finite number")
    else:
        raise ValueError(f"unknown feature kind {kind!r} for {field}; expected str, int64 or float64")


def _set_feature(fmap: Any, name: str, kind: str, value: Any) -> None:
    # Caller has checked the value (check_value).
    if kind == "str":
        fmap[name].bytes_list.value.append(value.encode("utf-8"))
    elif kind == "int64":
        fmap[name].int64_list.value.append(int(value))
    else:
        fmap[name].float_list.value.append(float(value))


def encode_feature(field: str, kind: str, value: Any) -> feature_pb2.Feature:
    """Encodes one raw value as a ``tf.train.Feature`` of its canonical kind.

    Args:
        field: path of the value, used in error messages.
        kind: canonical kind, ``"str"``, ``"int64"`` or ``"float64"``.
        value: the raw value.

    Returns:
        The encoded feature.

    Raises:
        FeatureError: if the value does not match the kind.
    """
    check_value(field, kind, value)
    holder = example_pb2.Example()
    _set_feature(holder.features.feature, "f", kind, value)
    return holder.features.feature["f"]


def validate_features(
    values: Any,
    where: str,
    required: Iterable[str] = (),
    allowed: Optional[Iterable[str]] = None,
) -> None:
    """Checks that a raw feature dict has every required key and only known, well-typed values.

    Args:
        values: the dict to check (anything else is an error).
        where: path of the dict in the request, e.g. ``"candidates[2]"``.
        required: keys that must be present and not None.
        allowed: keys that may be present (default: ``SERVING_FEATURE_KINDS``).

    Raises:
        FeatureError: naming the first bad field.
    """
    if not isinstance(values, Mapping):
        raise FeatureError(where, f"expected an object of raw features, got {type(values).__name__}")
    allowed_set = set(SERVING_FEATURE_KINDS if allowed is None else allowed)
    for name in required:
        if values.get(name) is None:
            raise FeatureError(f"{where}.{name}", "missing required feature")
    for name, value in values.items():
        if not isinstance(name, str) or name not in allowed_set:
            raise FeatureError(
                f"{where}.{name}",
                f"unknown feature; allowed features: {', '.join(sorted(allowed_set))}",
            )
        if value is None:
            continue
        check_value(f"{where}.{name}", SERVING_FEATURE_KINDS[name], value)


def make_example(
    raw: Mapping[str, Any], meta_embedding: np.ndarray, where: str = "features"
) -> example_pb2.Example:
    """Builds one ``tf.Example`` from raw features and a meta embedding.

    Args:
        raw: feature name -> raw value (None values are skipped); names must be serving
            features (``SERVING_FEATURE_KINDS``).
        meta_embedding: float vector ``[E]``, stored as float list ``META_EMBEDDING``.
        where: path used in error messages.

    Returns:
        The example.

    Raises:
        FeatureError: if a value does not match its feature's kind or a name is unknown.
    """
    example = example_pb2.Example()
    fmap = example.features.feature
    for name, value in raw.items():
        if value is None:
            continue
        kind = SERVING_FEATURE_KINDS.get(name)
        if kind is None:
            raise FeatureError(
                f"{where}.{name}",
                f"unknown feature; allowed features: {', '.join(sorted(SERVING_FEATURE_KINDS))}",
            )
        check_value(f"{where}.{name}", kind, value)
        _set_feature(fmap, name, kind, value)
    emb = np.asarray(meta_embedding, dtype=np.float32).reshape(-1)
    fmap[F.META_EMBEDDING].float_list.value.extend(emb.tolist())
    return example


def serialize_candidates(
    user_id: str,
    candidates: Sequence[Mapping[str, Any]],
    meta_embedding: np.ndarray,
    user_features: Optional[Mapping[str, Any]] = None,
) -> List[bytes]:
    """Serializes one ``tf.Example`` per candidate: user id, user features, candidate features
    and the user's meta embedding.

    The part shared by all candidates (user id, user features, meta embedding) is serialized
    once and appended to each candidate's own serialized features. Concatenated serialized
    protobuf messages parse as their merge, so each result is a valid serialized ``tf.Example``
    holding both parts, for any protobuf parser (``tf.io.parse_example``, TF Serving, Python).
    The candidates must not repeat a shared key (``validate_features`` plus the ranker's
    overlap check ensure it), and must already be validated.

    Args:
        user_id: the user; stored as feature ``USER_ID``.
        candidates: raw candidate feature dicts (values checked with ``check_value``).
        meta_embedding: float vector ``[E]`` of the user (shared), or ``[N, W]``, one row per
            candidate (a multi-block model's ``[e_user, e_user×genre]``, then stored in each
            candidate's own part).
        user_features: optional raw user features shared by all candidates.

    Returns:
        Serialized examples, in candidate order.

    Raises:
        FeatureError: if a candidate repeats a shared key or holds an unknown feature.
    """
    shared_raw = {**(user_features or {}), F.USER_ID: user_id}
    per_candidate = np.ndim(meta_embedding) == 2
    if per_candidate and np.shape(meta_embedding)[0] != len(candidates):
        raise ValueError(f"meta_embedding has {np.shape(meta_embedding)[0]} rows for "
                         f"{len(candidates)} candidates")
    shared_ex = make_example(shared_raw, np.zeros(0) if per_candidate else meta_embedding, "user")
    if per_candidate:
        del shared_ex.features.feature[F.META_EMBEDDING]
    shared = shared_ex.SerializeToString()
    shared_keys = set(shared_raw) | {F.META_EMBEDDING}
    kinds = SERVING_FEATURE_KINDS
    out: List[bytes] = []
    for i, cand in enumerate(candidates):
        ex = example_pb2.Example()
        fmap = ex.features.feature
        for name, value in cand.items():
            if value is None:
                continue
            kind = kinds.get(name)
            if kind is None or name in shared_keys:
                raise FeatureError(
                    f"candidates[{i}].{name}",
                    "is set for the whole request (user id, user features, meta embedding); "
                    "remove it from the candidate" if kind else "unknown feature",
                )
            _set_feature(fmap, name, kind, value)
        if per_candidate:
            fmap[F.META_EMBEDDING].float_list.value.extend(
                np.asarray(meta_embedding[i], dtype=np.float32).tolist())
        out.append(ex.SerializeToString() + shared)
    return out
