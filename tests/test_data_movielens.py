"""MovieLens readers: counts, hand-checked rows, and the PyPI (recbole wheel) copy."""
import os

import numpy as np
import pandas as pd
import pytest

from limaml.data import canonical, fetch, movielens
from schema import features as F
from tests.conftest_data import ml100k_pypi_folder, require_ml1m, require_ml100k_original


@pytest.fixture(scope="module")
def ml100k_original() -> pd.DataFrame:
    return canonical.validate(movielens.read_ml100k(require_ml100k_original()), "ml-100k")


@pytest.fixture(scope="module")
def ml100k_pypi() -> pd.DataFrame:
    return canonical.validate(movielens.read_recbole_ml100k(ml100k_pypi_folder()), "recbole")


@pytest.fixture(scope="module", params=["original", "pypi"])
def ml100k(request) -> pd.DataFrame:
    """Both readers: the original GroupLens files (skipped when absent) and the PyPI copy."""
    return request.getfixturevalue(f"ml100k_{request.param}")


def _row(frame, user, item):
    rows = frame[(frame[F.USER_ID] == user) & (frame[F.ITEM_ID] == item)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_ml100k_counts(ml100k):
    assert len(ml100k) == 100_000
    assert ml100k[F.USER_ID].nunique() == 943
    assert ml100k[F.ITEM_ID].nunique() == 1_682
    # Rating histogram from the dataset README: 4s and 5s are the positives.
    assert int(ml100k[F.LABEL].sum()) == 34_174 + 21_201
    assert list(ml100k.columns) == list(F.CANONICAL_COLUMNS)


def test_ml100k_hand_checked_rows(ml100k):
    # u.data line 1: "196 242 3 881250949"; u.user: 196|49|M|writer|55105; u.item 242 = Kolya (1996), Comedy.
    r = _row(ml100k, "196", "242")
    assert (r[F.TIMESTAMP], r[F.RATING], r[F.LABEL]) == (881250949, 3.0, 0)
    assert (r[F.AGE_BUCKET], r[F.GENDER], r[F.OCCUPATION], r[F.ZIP_PREFIX]) == ("45-49", "M", "writer", "5")
    assert (r[F.GENRES], r[F.RELEASE_YEAR]) == ("Comedy", 1996)
    # user 1: 1|24|M|technician|85711; item 1 Toy Story (1995): Animation, Children's, Comedy; rated 5.
    r = _row(ml100k, "1", "1")
    assert (r[F.AGE_BUCKET], r[F.ZIP_PREFIX], r[F.OCCUPATION]) == ("18-24", "8", "technician")
    assert (r[F.GENRES], r[F.RELEASE_YEAR], r[F.RATING], r[F.LABEL]) == ("Animation|Children's|Comedy", 1995, 5.0, 1)
    # item 267 has no title year and no release date: year 0, genre 'unknown'.
    items = ml100k.drop_duplicates(F.ITEM_ID).set_index(F.ITEM_ID)
    assert (items.loc["267", F.RELEASE_YEAR], items.loc["267", F.GENRES]) == (0, "unknown")


def test_age_buckets_by_hand():
    got = movielens.age_bucket(np.array([7, 17, 18, 24, 25, 44, 45, 50, 55, 56, 73]))
    assert list(got) == ["under18", "under18", "18-24", "18-24", "25-34", "35-44", "45-49", "50-55",
                         "50-55", "56+", "56+"]


def test_ml1m_counts_and_rows():
    source = require_ml1m()
    frame = canonical.validate(movielens.read_ml1m(source), "ml-1m")
    if os.path.exists(os.path.join(source, "ratings.dat")):  # the full ML-1M (its README's counts)
        assert (len(frame), frame[F.USER_ID].nunique()) == (1_000_209, 6_040)
    else:  # ../shared's copy: timestamps only for users 1-2999
        assert (len(frame), frame[F.USER_ID].nunique()) == (487_650, 2_999)
    # users.dat: 1::F::1::10::48067 ; movies.dat: 1193::One Flew Over the Cuckoo's Nest (1975)::Drama
    # ratings: 1::1193::5::978300760
    r = _row(frame, "1", "1193")
    assert (r[F.TIMESTAMP], r[F.RATING], r[F.LABEL]) == (978300760, 5.0, 1)
    assert (r[F.AGE_BUCKET], r[F.GENDER], r[F.OCCUPATION], r[F.ZIP_PREFIX]) == ("under18", "F", "K-12 student", "4")
    assert (r[F.GENRES], r[F.RELEASE_YEAR]) == ("Drama", 1975)


def test_pypi_copy_matches_shared_copy(ml100k_original, tmp_path_factory):
    ml100k = ml100k_original
    cache = str(tmp_path_factory.mktemp("cache"))
    folder = fetch.fetch_ml100k(cache)
    assert fetch.sha256_of(os.path.join(cache, fetch.RECBOLE_WHEEL)) == fetch.RECBOLE_SHA256
    pypi = canonical.validate(movielens.read_recbole_ml100k(folder), "recbole")
    assert len(pypi) == 100_000
    diff = (pypi != ml100k)
    # Same rows and features; RecBole lacks one title year (item 1412), nothing else differs.
    assert diff.drop(columns=[F.RELEASE_YEAR]).to_numpy().sum() == 0
    assert set(pypi.loc[diff[F.RELEASE_YEAR], F.ITEM_ID]) == {"1412"}
