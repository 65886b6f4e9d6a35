"""Encoded columns travel in the narrowest dtype that holds their values exactly.

MEG's columnar input is mostly small numbers stored wide: the genre multi-hot is 64 float32 0s
and 1s a row, vocabulary ids are int64 below a few thousand. Narrowed (a float matrix of exact
0s and 1s to uint8, integers to the smallest of uint8 / int16 / int32 holding their range) a row
is ~3x smaller through the grouped Parquet input, Beam and the kernel's per-chunk gathers, with
the same values: the model casts every input to its own dtype (``meta_input``,
``global_forward``, ``table_rows`` cast ids to int64 and features to float).

Used by :mod:`components.meta_embedding_gen.refresh_encoding` (before gathering an output of
distinct values back to the rows) and :func:`components.meta_embedding_gen.inputs.columns_to_arrow`.
"""
from __future__ import annotations

import numpy as np

_INT_STEPS = (np.uint8, np.int16, np.int32)


def compact(values: np.ndarray) -> np.ndarray:
    """``values`` in a narrower dtype holding exactly the same values, else unchanged.

    A floating array with ndim >= 2 whose values are all exactly 0 or 1 (no -0.0) becomes
    uint8; an int64 / int32 / int16 array becomes the first of uint8, int16, int32 whose range
    holds its minimum and maximum. Anything else (other floats, vectors of floats, strings,
    objects, empty arrays) is returned as it is.
    """
    if not values.size:
        return values
    if values.dtype.kind == "f":
        if values.ndim < 2 or not ((values == 0) | (values == 1)).all() or np.signbit(values).any():
            return values
        return values.astype(np.uint8)
    if values.dtype.kind in "iu":
        lo, hi = values.min(), values.max()
        for dtype in _INT_STEPS:
            info = np.iinfo(dtype)
            if np.dtype(dtype).itemsize >= values.dtype.itemsize:
                return values
            if info.min <= lo and hi <= info.max:
                return values.astype(dtype)
    return values
