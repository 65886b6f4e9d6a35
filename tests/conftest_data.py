"""Shared locations of the real datasets beside the project (../shared/data)."""
import os

import pytest

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
ML100K = os.path.join(SHARED, "movielens-100k")
ML1M = os.path.join(SHARED, "movielens-1m")


def require(path: str) -> str:
    """Fails (not skips) when the shared data is missing: CI always has ../shared beside the clone."""
    if not os.path.isdir(path):
        pytest.fail(f"{path} is missing; the tests need ../shared/data beside the project checkout")
    return path
