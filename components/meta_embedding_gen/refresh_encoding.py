"""Refresh: raw canonical rows -> the model's encoded features, with the pushed Transform graph.

The pushed version folder carries a copy of the Transform output
(``assets.extra/meta_block/transform_graph/``); :func:`encode_with_transform` feeds it the raw
columns the meta block needs (:data:`NEEDED_RAW_COLUMNS`), each column's distinct values once
where an output depends on that column alone, and returns numpy columns in the frame's row
order. :func:`check_columns` names missing raw columns before any work.

Used by :mod:`components.meta_embedding_gen.refresh` and ``benchmarks/serve_blocks.py``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import pandas as pd

from components.meta_embedding_gen.compact_columns import compact
from schema import features as F

ENCODE_CHUNK_ROWS = 65_536
PACKED_DISTINCT = 8_192
"""Columns with at most this many distinct values are transformed together, in one call."""


# Raw columns meta-embedding generation reads: the model's features, the user id (task key and
# hashed user-id input), the label (fine-tuning loss) and the timestamp (order, recency). Other
# raw features of the transform's input (rating, oracle_prob, the protocol's cohort and
# history_size) feed nothing the meta block uses; TFT fills them with defaults.
NEEDED_RAW_COLUMNS: Tuple[str, ...] = (F.USER_ID, F.TIMESTAMP, F.LABEL) + F.MODEL_FEATURES


def needed_raw_features(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The entries of a transform's raw feature ``spec`` that refresh feeds (:data:`NEEDED_RAW_COLUMNS`)."""
    return {name: feat for name, feat in spec.items() if name in NEEDED_RAW_COLUMNS}


def check_columns(frame: pd.DataFrame, spec: Dict[str, Any], data_dir: str) -> None:
    """Raises ValueError naming the needed raw columns the prepared data lacks (before any work)."""
    missing = [name for name in needed_raw_features(spec) if name not in frame.columns]
    if missing:
        raise ValueError(f"{data_dir}: the prepared data lacks column(s) {missing} that the model reads "
                         f"(has {list(frame.columns)}); prepare it with limaml data prepare")


def _converted(col: np.ndarray, feat: Any) -> np.ndarray:
    """A raw column as the Transform is fed it: strings as str (UTF-8 in the tensor), else the
    spec's dtype."""
    import tensorflow as tf

    if feat.dtype == tf.string:
        return col.astype(str)  # UTF-8 (numpy's bytes cast is ASCII only)
    return col.astype(feat.dtype.as_numpy_dtype)


def _feed(name: str, values: np.ndarray, feat: Any) -> Any:
    """``[n]`` converted values -> the tensor the raw spec's entry ``feat`` describes."""
    import tensorflow as tf

    n = values.shape[0]
    tensor = tf.constant(values)
    if isinstance(feat, tf.io.FixedLenFeature):
        shape = list(feat.shape)
        if shape not in ([], [1]):
            raise ValueError(f"raw feature {name!r} has shape {shape}; refresh expects scalars")
        return tensor if not shape else tf.reshape(tensor, [n, 1])
    if isinstance(feat, tf.io.VarLenFeature):
        return tf.SparseTensor(
            indices=tf.stack([tf.range(n, dtype=tf.int64), tf.zeros([n], tf.int64)], axis=1),
            values=tensor, dense_shape=[n, 1])
    raise ValueError(f"raw feature {name!r} has an unsupported spec {type(feat).__name__}")


def _raw_tensors(frame: pd.DataFrame, spec: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name, feat in needed_raw_features(spec).items():
        if name not in frame.columns:
            raise ValueError(f"the model reads raw column {name!r}, which the prepared "
                             f"data lacks (columns: {list(frame.columns)})")
        out[name] = _feed(name, _converted(frame[name].to_numpy(), feat), feat)
    return out


def _as_numpy(value: Any) -> np.ndarray:
    import tensorflow as tf

    if isinstance(value, tf.SparseTensor):
        value = tf.sparse.to_dense(value)
    elif isinstance(value, tf.RaggedTensor):
        value = value.to_tensor()
    return value.numpy()


def raw_spec_of(output: Any) -> Dict[str, Any]:
    """The raw feature spec of a ``TFTransformOutput`` (the canonical contract when not copied)."""
    from trainer import preprocessing

    try:
        return output.raw_feature_spec()
    except Exception:  # noqa: BLE001 - raw metadata not copied: the canonical contract
        return preprocessing.raw_feature_spec()


Transform = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""Raw feature tensors -> the outputs computable from them (TFT's pruning)."""


def load_transform(output: Any) -> Transform:
    """The Transform graph of a ``TFTransformOutput`` as a plain callable.

    TFT's own loader (``trainer.export.TransformGraph``, the call ``transform_raw_features``
    makes inside its Keras layer) without the Keras layer around it: ~10 ms a call instead of
    ~30 ms, and refresh makes one call per raw column plus the probes.
    """
    from trainer.export import TransformGraph

    return TransformGraph(output.transform_savedmodel_dir)


def single_column_outputs(transform: Transform, frame: pd.DataFrame, spec: Dict[str, Any]
                          ) -> Tuple[Dict[str, Tuple[str, ...]], Tuple[str, ...]]:
    """Which Transform outputs each raw column determines alone, asked of TFT itself.

    TFT's loader (``apply_transform_model``, what ``transform_raw_features`` calls) returns only
    the outputs whose raw inputs were all fed (it prunes by the graph's own dependencies), so
    feeding one column returns exactly the outputs computed from that column alone. An output
    that needs two columns (a feature cross) appears only when both are fed. The loader is
    asked without a run where it can say (``TransformGraph.outputs_from``), else fed one row.

    Args:
        transform: the Transform graph (:func:`load_transform`).
        frame: at least one canonical row (the probe values).
        spec: the raw feature spec (:func:`raw_spec_of`).

    Returns:
        ``({column: outputs of that column alone}, every output of the needed columns)``; an
        output listed for several columns (one that depends on none) is kept for the first.
    """
    fed = needed_raw_features(spec)
    one = frame.iloc[:1]
    ask = getattr(transform, "outputs_from", lambda _names: None)

    def outputs(names: Sequence[str]) -> set:
        got = ask(names)
        if got is None:
            got = set(transform({name: _feed(name, _converted(one[name].to_numpy(), fed[name]),
                                             fed[name]) for name in names}))
        return got

    every = tuple(sorted(outputs(list(fed))))
    seen: set = set()
    alone: Dict[str, Tuple[str, ...]] = {}
    for name in fed:
        got = outputs([name])
        alone[name] = tuple(sorted(got - seen))
        seen.update(got)
    return alone, every


def _transform_rows(transform: Transform, frame: pd.DataFrame, spec: Dict[str, Any],
                    names: Sequence[str], chunk_rows: int) -> Dict[str, np.ndarray]:
    """Outputs ``names`` row by row (every needed column fed), ``chunk_rows`` rows per call."""
    parts: Dict[str, List[np.ndarray]] = {k: [] for k in names}
    for lo in range(0, len(frame), chunk_rows):
        got = transform(_raw_tensors(frame.iloc[lo:lo + chunk_rows], spec))
        for name in names:
            parts[name].append(_as_numpy(got[name]))
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def _distinct(col: Any, feat: Any) -> Tuple[np.ndarray, np.ndarray]:
    """``(codes [N], distinct converted values [D])`` with ``converted(col) == values[codes]``.

    A pandas categorical column (no missing value) gives its codes, renumbered over the
    categories in use, and those categories converted. Python objects are hashed as they are
    and only the distinct ones converted (the cast is the costly part); with a missing value
    (None, NaN), which the hash would merge, the whole column is converted first.
    """
    if isinstance(getattr(col, "dtype", None), pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy()
        if not (codes < 0).any():
            codes, used = pd.factorize(codes)
            return codes, _converted(col.cat.categories.to_numpy(dtype=object)[used], feat)
    col = np.asarray(col)
    if col.dtype == object:
        codes, uniques = pd.factorize(col)  # a missing value gets code -1
        if not codes.size or codes.min() >= 0:
            return codes, _converted(np.asarray(uniques, dtype=object), feat)
    values = _converted(col, feat)
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    return codes, np.asarray(uniques, dtype=values.dtype)


def _transform_columns(transform: Transform, frame: pd.DataFrame, fed: Dict[str, Any],
                       wanted: Mapping[str, Sequence[str]], chunk_rows: int
                       ) -> Dict[str, np.ndarray]:
    """Outputs of single raw columns, each column's distinct values transformed once.

    Columns with at most :data:`PACKED_DISTINCT` distinct values share one call: row i of its
    feed holds each column's i-th distinct value (a column with fewer repeats its first one),
    so an output of column c alone is, at row i, its value for c's i-th distinct value; rows
    past c's count are dropped. Outputs of several columns come back from that call too,
    computed on unrelated values, and are not used. A column with more distinct values (user
    ids) goes alone, ``chunk_rows`` values per call, so no column is padded to its size.

    Args:
        transform: the Transform graph (:func:`load_transform`).
        frame: canonical rows ``[N]``.
        fed: the raw spec entries of the needed columns (:func:`needed_raw_features`).
        wanted: ``{column: outputs of that column alone}`` (columns without outputs left out).
        chunk_rows: rows of the feed per call.

    Returns:
        ``{output: [N, ...]}`` in the frame's row order, each in the narrowest dtype holding it.
    """
    distinct = {name: _distinct(frame[name], fed[name]) for name in wanted}
    small = [name for name in wanted if distinct[name][1].shape[0] <= PACKED_DISTINCT]
    packs = ([small] if small else []) + [[name] for name in wanted if name not in small]
    out: Dict[str, np.ndarray] = {}
    for pack in packs:
        size = max(distinct[name][1].shape[0] for name in pack)
        parts: Dict[str, List[np.ndarray]] = {k: [] for name in pack for k in wanted[name]}
        for lo in range(0, size, chunk_rows):
            rows = np.arange(lo, min(lo + chunk_rows, size))
            got = transform({name: _feed(name, _padded(distinct[name][1], rows), fed[name])
                             for name in pack})
            for name in pack:
                n = max(0, min(rows.shape[0], distinct[name][1].shape[0] - lo))  # real rows
                for out_name in wanted[name]:
                    parts[out_name].append(_as_numpy(got[out_name])[:n])
        for name in pack:
            for out_name in wanted[name]:
                out[out_name] = np.take(compact(np.concatenate(parts[out_name])), distinct[name][0],
                                        axis=0)
    return out


def _padded(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]``, with ``values[0]`` at the rows past its end."""
    return values[np.where(rows < values.shape[0], rows, 0)]


def _strings(col: pd.Series) -> np.ndarray:
    """A column as an object array of ``str`` (a categorical one by its categories, once each)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy()
        if not (codes < 0).any():
            return col.cat.categories.astype(str).to_numpy(dtype=object)[codes]
    return col.astype(str).to_numpy().astype(object)


def encode_with_transform(frame: pd.DataFrame, transform_dir: str,
                          chunk_rows: int = ENCODE_CHUNK_ROWS) -> Dict[str, np.ndarray]:
    """Raw canonical rows -> encoded model features with the pushed Transform graph.

    A Transform applies row by row (analyzers are constants by then; TFT runs the graph on
    batches of any size), so an output computed from one raw column is a function of that
    column's value: each column's distinct values are transformed once and the results gathered
    back to the rows (a column has few distinct values: items, genres, user attributes). Outputs
    of several columns, if the graph has any (:func:`single_column_outputs`), are transformed
    row by row. Same values as transforming every row (tested against a ``tft_beam`` run).

    Args:
        frame: canonical interactions ``[N]``.
        transform_dir: a TFT output folder (``TFTransformOutput``).
        chunk_rows: rows (or distinct values) transformed per call.

    Returns:
        ``{feature: [N, ...]}`` in the frame's row order; ``user_id`` (object str) and
        ``timestamp`` (int64) are taken from ``frame``; outputs computed column by column come
        in the narrowest dtype holding them (a multi-hot as uint8, ids as uint8 / int16 /
        int32: :func:`~components.meta_embedding_gen.compact_columns.compact`).
    """
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(transform_dir)
    spec = raw_spec_of(output)
    transform = load_transform(output)
    fed = needed_raw_features(spec)
    for name in fed:
        if name not in frame.columns:
            raise ValueError(f"the model reads raw column {name!r}, which the prepared "
                             f"data lacks (columns: {list(frame.columns)})")
    out: Dict[str, np.ndarray] = {}
    if len(frame):
        taken = (F.USER_ID, F.TIMESTAMP)  # from the frame, below
        alone, every = single_column_outputs(transform, frame, spec)
        wanted = {name: [k for k in outputs if k not in taken] for name, outputs in alone.items()}
        wanted = {name: outputs for name, outputs in wanted.items() if outputs}
        if wanted:
            out.update(_transform_columns(transform, frame, fed, wanted, chunk_rows))
        crossed = [k for k in every if k not in out and k not in taken]
        if crossed:
            out.update(_transform_rows(transform, frame, spec, crossed, chunk_rows))
    out[F.USER_ID] = _strings(frame[F.USER_ID])
    out[F.TIMESTAMP] = frame[F.TIMESTAMP].to_numpy().astype(np.int64)
    return out
