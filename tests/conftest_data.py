"""Where the tests find the real datasets: ``../shared/data`` (CI), an environment variable, or PyPI.

- ML-100K in its original GroupLens format: ``$LIMAML_ML100K``, else
  ``../shared/data/movielens-100k``. When neither exists, tests that only need the ML-100K rows
  use the copy fetched from PyPI (the recbole 1.2.1 wheel, checksummed, cached in
  ``$LIMAML_CACHE`` or ``~/.cache/limaml``: the path ``limaml data prepare movielens-100k`` takes
  without ``--source``); tests of the original-format files are skipped, saying what to provide.
- ML-1M cannot be fetched (no redistributable copy on PyPI): ``$LIMAML_ML1M``, else
  ``../shared/data/movielens-1m``; tests that need it are skipped, saying how to provide it.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import pandas as pd
import pytest

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
ML100K_ENV = "LIMAML_ML100K"
ML1M_ENV = "LIMAML_ML1M"


def _located(env: str, shared_name: str) -> Optional[str]:
    path = os.environ.get(env) or os.path.join(SHARED, shared_name)
    return path if os.path.isdir(path) else None


def ml100k_original() -> Optional[str]:
    """Folder of ML-100K's original files (u.data, u.user, u.item, u.genre), or None."""
    return _located(ML100K_ENV, "movielens-100k")


def require_ml100k_original() -> str:
    """The original ML-100K folder; skips the test, saying how to provide it, when there is none."""
    path = ml100k_original()
    if path is None:
        pytest.skip(f"needs ML-100K in its original format (u.data, u.user, u.item, u.genre): set "
                    f"{ML100K_ENV}=/path/to/ml-100k or put it at {os.path.join(SHARED, 'movielens-100k')}")
    return path


def require_ml1m() -> str:
    """The ML-1M folder; skips the test, saying how to provide it, when there is none."""
    path = _located(ML1M_ENV, "movielens-1m")
    if path is None:
        pytest.skip(f"needs ML-1M, which cannot be fetched: set {ML1M_ENV}=/path/to/ml-1m (users.dat, "
                    f"movies.dat, ratings.dat) or put it at {os.path.join(SHARED, 'movielens-1m')}")
    return path


def ml100k_pypi_folder() -> str:
    """ML-100K from PyPI in RecBole's format (fetched once, then cached); skips when it cannot be."""
    from limaml.data import fetch

    try:
        return fetch.fetch_ml100k()
    except (RuntimeError, OSError) as err:
        pytest.skip(f"ML-100K could not be fetched from PyPI ({err}); set {ML100K_ENV}=/path/to/ml-100k "
                    f"or put it at {os.path.join(SHARED, 'movielens-100k')}")


@functools.lru_cache(maxsize=None)
def _ml100k_frame(source: Optional[str]) -> pd.DataFrame:
    from limaml.data import canonical, movielens

    if source is not None:
        return canonical.validate(movielens.read_ml100k(source), "ml-100k")
    return canonical.validate(movielens.read_recbole_ml100k(ml100k_pypi_folder()), "ml-100k (PyPI)")


def ml100k_frame() -> pd.DataFrame:
    """ML-100K's canonical rows: the original files when present, else the PyPI copy.

    The two agree on every row and feature except one release year (item 1412, see
    ``tests/test_data_movielens.py``). Read once per session; each call returns a copy.
    """
    return _ml100k_frame(ml100k_original()).copy()
