"""Binary feature matrices (multi-hots) travel as uint8.

An encoded ``[N, W]`` float column of 0s and 1s (the genre multi-hot, 64 floats a row) is a
quarter of the bytes as uint8, and exactly the same values: MEG's grouped Parquet input, Beam
and the kernel's per-chunk gathers all move 4x less, and the model casts its inputs to its own
dtype anyway (``global_forward``, ``meta_input``). Anything else is left as it is.

Used by :mod:`components.meta_embedding_gen.refresh_encoding` (before gathering an output of
distinct values back to the rows) and :func:`components.meta_embedding_gen.inputs.columns_to_arrow`.
"""
from __future__ import annotations

import numpy as np


def compact(values: np.ndarray) -> np.ndarray:
    """``values`` as uint8 when it is a float matrix holding only 0 and 1, else unchanged.

    Args:
        values: any array; only floating ``[N, W, ...]`` arrays (ndim >= 2) are considered.

    Returns:
        A uint8 array equal to ``values`` element for element, or ``values`` itself.
    """
    if values.ndim < 2 or values.dtype.kind != "f" or not values.size:
        return values
    if not ((values == 0) | (values == 1)).all() or np.signbit(values).any():  # -0.0 stays too
        return values
    return values.astype(np.uint8)
