"""Feature layout of the model: which encoded features feed the meta block and which the global block.

The encoded-feature contract (what Transform outputs and the trainer consumes), from
:data:`schema.features.ENCODINGS`:

* categorical feature ``f``: int64 id in ``[0, vocab_size_f)`` (vocabulary plus one OOV id),
* multi-hot feature (genres): float32 vector ``[buckets]``,
* numeric feature (release_year): float32 scalar (z-scored),
* ``user_hash``: int64 in ``[0, ModelConfig.user_id_buckets)``,
* ``label``: float32 0/1.

Meta features (``ModelConfig.meta_features``) go to the meta block, every other model feature to
the global block.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Tuple

from limaml.config import ModelConfig
from schema import features

USER_HASH = "user_hash"
MASK = "mask"
SUPPORT = "support"
QUERY = "query"


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
    """Which encoded features go where, and their widths.

    Attributes:
        meta_categorical: ``(name, vocab_size)`` of categorical meta features (one-hot in meta_x).
        meta_multi_hot: ``(name, buckets)`` of multi-hot meta features.
        meta_numeric: names of numeric meta features.
        global_categorical: ``(name, vocab_size)`` of categorical global features (embedded).
        global_multi_hot: ``(name, buckets)`` of multi-hot global features.
        global_numeric: names of numeric global features.
        use_user_id_in_meta: whether the hashed user id one-hot is part of meta_x.
        user_id_buckets: number of user hash buckets.
        user_id_embedding_dim: width of the meta block's user-id embedding row (0: none); the
            row is a meta-block input next to meta_x, adapted sparsely (one row per task).
    """

    meta_categorical: Tuple[Tuple[str, int], ...]
    meta_multi_hot: Tuple[Tuple[str, int], ...]
    meta_numeric: Tuple[str, ...]
    global_categorical: Tuple[Tuple[str, int], ...]
    global_multi_hot: Tuple[Tuple[str, int], ...]
    global_numeric: Tuple[str, ...]
    use_user_id_in_meta: bool
    user_id_buckets: int
    user_id_embedding_dim: int = 0

    @property
    def meta_dim(self) -> int:
        """Width D of the dense meta input meta_x."""
        return (sum(v for _, v in self.meta_categorical) + sum(b for _, b in self.meta_multi_hot)
                + len(self.meta_numeric) + (self.user_id_buckets if self.use_user_id_in_meta else 0))

    @property
    def meta_feature_names(self) -> Tuple[str, ...]:
        """Encoded feature keys read by the meta block (incl. ``user_hash`` when used)."""
        names = tuple(n for n, _ in self.meta_categorical) + tuple(
            n for n, _ in self.meta_multi_hot) + self.meta_numeric
        uses_id = self.use_user_id_in_meta or self.user_id_embedding_dim > 0
        return names + ((USER_HASH,) if uses_id else ())

    @property
    def global_feature_names(self) -> Tuple[str, ...]:
        """Encoded feature keys read by the global block."""
        return tuple(n for n, _ in self.global_categorical) + tuple(
            n for n, _ in self.global_multi_hot) + self.global_numeric

    @property
    def vocab_sizes(self) -> Dict[str, int]:
        """Vocabulary size (incl. OOV) of every categorical feature."""
        return dict(self.meta_categorical + self.global_categorical)

    def global_input_dim(self, embedding_dim: int, categorical_embedding_dim: int) -> int:
        """Width of the global block input ``[meta embedding, cat embeddings, multi-hot, numeric]``."""
        return (embedding_dim + categorical_embedding_dim * len(self.global_categorical)
                + sum(b for _, b in self.global_multi_hot) + len(self.global_numeric))

    def to_dict(self) -> Dict[str, object]:
        """JSON-friendly form (for the exported meta block)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> "FeatureLayout":
        """Inverse of :meth:`to_dict`."""
        def pairs(v):  # lists from JSON -> tuples
            return tuple((str(a), int(b)) for a, b in v)
        return cls(
            meta_categorical=pairs(raw["meta_categorical"]),
            meta_multi_hot=pairs(raw["meta_multi_hot"]),
            meta_numeric=tuple(raw["meta_numeric"]),
            global_categorical=pairs(raw["global_categorical"]),
            global_multi_hot=pairs(raw["global_multi_hot"]),
            global_numeric=tuple(raw["global_numeric"]),
            use_user_id_in_meta=bool(raw["use_user_id_in_meta"]),
            user_id_buckets=int(raw["user_id_buckets"]),
            user_id_embedding_dim=int(raw.get("user_id_embedding_dim", 0)),
        )


def build_layout(model_cfg: ModelConfig, vocab_sizes: Mapping[str, int]) -> FeatureLayout:
    """Builds the layout from schema ENCODINGS, vocabulary sizes and the model config.

    Args:
        model_cfg: the model config (meta features, user-id settings).
        vocab_sizes: categorical feature -> number of ids *including* the OOV id (i.e.
            ``TFTransformOutput.vocabulary_size_by_name(f) + 1``).

    Returns:
        The :class:`FeatureLayout`.

    Raises:
        KeyError: when a categorical feature has no vocabulary size.
    """
    meta = set(features.validate_meta_features(tuple(model_cfg.meta_features)))
    parts: Dict[str, list] = {k: [] for k in ("mc", "mm", "mn", "gc", "gm", "gn")}
    for enc in features.ENCODINGS:
        side = "m" if enc.name in meta else "g"
        if enc.kind == "categorical":
            if enc.name not in vocab_sizes:
                raise KeyError(f"no vocabulary size for categorical feature {enc.name!r}; "
                               f"got sizes for {sorted(vocab_sizes)}")
            size = int(vocab_sizes[enc.name])
            if size < 1:
                raise ValueError(f"vocabulary size of {enc.name!r} is {size}; must be >= 1")
            parts[side + "c"].append((enc.name, size))
        elif enc.kind == "multi_hot":
            parts[side + "m"].append((enc.name, int(enc.buckets)))
        elif enc.kind == "numeric":
            parts[side + "n"].append(enc.name)
        else:
            raise ValueError(f"unknown encoding kind {enc.kind!r} of {enc.name!r}")
    return FeatureLayout(
        meta_categorical=tuple(parts["mc"]), meta_multi_hot=tuple(parts["mm"]),
        meta_numeric=tuple(parts["mn"]), global_categorical=tuple(parts["gc"]),
        global_multi_hot=tuple(parts["gm"]), global_numeric=tuple(parts["gn"]),
        use_user_id_in_meta=bool(model_cfg.use_user_id_in_meta),
        user_id_buckets=int(model_cfg.user_id_buckets),
        user_id_embedding_dim=int(model_cfg.user_id_embedding_dim),
    )
