"""Every feature key of the canonical interaction format, and its role.

This module is the single place that names features. Readers, the synthetic generator,
the Transform preprocessing, TaskGen, the trainer and the serving client all import from
here; nothing else hard-codes a feature name.

Canonical record (one row per interaction), DESIGN.md section 3:

    user_id      string   task key
    item_id      string
    timestamp    int64    seconds; orders a user's history
    label        int64    0/1
    rating       float    raw rating (synthetic data: the sampled label)
    age_bucket   string   user meta feature
    gender       string   user meta feature
    occupation   string   user meta feature
    zip_prefix   string   user meta feature
    genres       string   item feature, '|'-joined genre names
    release_year int64    item feature, 0 when unknown
    oracle_prob  float    synthetic data only: the true click probability
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
LABEL = "label"
RATING = "rating"
ORACLE_PROB = "oracle_prob"

AGE_BUCKET = "age_bucket"
GENDER = "gender"
OCCUPATION = "occupation"
ZIP_PREFIX = "zip_prefix"
GENRES = "genres"
RELEASE_YEAR = "release_year"

# Name of the meta embedding as a serving input of the global block.
META_EMBEDDING = "meta_embedding"

GENRE_SEPARATOR = "|"

USER_FEATURES: Tuple[str, ...] = (AGE_BUCKET, GENDER, OCCUPATION, ZIP_PREFIX)
ITEM_FEATURES: Tuple[str, ...] = (GENRES, RELEASE_YEAR)

# Meta features (input of the meta block) by default: the user features.
DEFAULT_META_FEATURES: Tuple[str, ...] = USER_FEATURES

# Canonical column -> numpy/pandas dtype kind ("str", "int64", "float64").
CANONICAL_COLUMNS: Dict[str, str] = {
    USER_ID: "str",
    ITEM_ID: "str",
    TIMESTAMP: "int64",
    LABEL: "int64",
    RATING: "float64",
    AGE_BUCKET: "str",
    GENDER: "str",
    OCCUPATION: "str",
    ZIP_PREFIX: "str",
    GENRES: "str",
    RELEASE_YEAR: "int64",
}
# Columns a dataset may add to the canonical ones.
OPTIONAL_COLUMNS: Dict[str, str] = {ORACLE_PROB: "float64"}

# Columns the protocol-aware ExampleGen adds to evaluation (query) examples, for TFMA slicing.
COHORT = "cohort"
HISTORY_SIZE = "history_size"
PROTOCOL_COLUMNS: Dict[str, str] = {COHORT: "str", HISTORY_SIZE: "int64"}


@dataclasses.dataclass(frozen=True)
class FeatureEncoding:
    """How one raw feature is encoded for the model (by Transform, or by the numpy encoder).

    Attributes:
        name: raw feature key.
        kind: ``"categorical"`` (one id in ``[0, buckets)``), ``"multi_hot"`` (a
            ``'|'``-joined string hashed into ``buckets`` slots, float vector ``[buckets]``)
            or ``"numeric"`` (one z-scored float).
        buckets: number of ids (categorical: vocabulary plus OOV; multi_hot: hash slots).
    """

    name: str
    kind: str
    buckets: int = 0


# Model features and their encodings. user_id is the task key, not a model feature,
# except through the optional hashed user-id input of the meta block / wide&deep baseline.
ENCODINGS: Tuple[FeatureEncoding, ...] = (
    FeatureEncoding(ITEM_ID, "categorical", 0),  # vocabulary size comes from the data
    FeatureEncoding(AGE_BUCKET, "categorical", 0),
    FeatureEncoding(GENDER, "categorical", 0),
    FeatureEncoding(OCCUPATION, "categorical", 0),
    FeatureEncoding(ZIP_PREFIX, "categorical", 0),
    FeatureEncoding(GENRES, "multi_hot", 64),
    FeatureEncoding(RELEASE_YEAR, "numeric"),
)

MODEL_FEATURES: Tuple[str, ...] = tuple(e.name for e in ENCODINGS)


def encoding(name: str) -> FeatureEncoding:
    """Returns the encoding of feature ``name``; raises KeyError naming the known keys."""
    for enc in ENCODINGS:
        if enc.name == name:
            return enc
    raise KeyError(f"unknown feature {name!r}; known features: {', '.join(MODEL_FEATURES)}")


def validate_meta_features(meta_features: Tuple[str, ...]) -> Tuple[str, ...]:
    """Checks that every meta feature is a model feature; returns them unchanged."""
    unknown = [f for f in meta_features if f not in MODEL_FEATURES]
    if unknown:
        raise ValueError(
            f"meta features {unknown} are not model features; choose from {list(MODEL_FEATURES)}"
        )
    if not meta_features:
        raise ValueError("meta_features is empty; the meta block needs at least one input feature")
    return tuple(meta_features)


def schema_path() -> str:
    """Path of the curated ``schema.pbtxt`` shipped with the package."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.pbtxt")
