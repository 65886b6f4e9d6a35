"""MovieLens readers: ML-100K and ML-1M in their original formats -> canonical interactions.

Label = rating >= 4. User meta features: age bucket (ML-1M's buckets, applied to ML-100K's raw
ages), gender, occupation (ML-1M codes mapped to names), zip prefix (first character: the US
national area). Item features: genres ('|'-joined, sorted) and release year (the year in the title, else the
release date's; 0 when unknown).
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd

from limaml.data import textio
from limaml.data.errors import DataError
from schema import features as F

POSITIVE_RATING = 4
ZIP_PREFIX_LEN = 1

# ML-1M age codes and the bucket names used for both datasets.
AGE_BUCKETS: Tuple[Tuple[int, str], ...] = (
    (1, "under18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"), (50, "50-55"), (56, "56+"))
ML1M_OCCUPATIONS: Tuple[str, ...] = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer")


MAX_AGE = 120


def user_ages(path: str, users_raw: pd.DataFrame, column: str = "age") -> np.ndarray:
    """Raw ages (years) of a user file, checked to lie in ``[0, MAX_AGE]``.

    Raises:
        DataError: a non-integer or out-of-range age, naming the file, line and value.
    """
    ages = textio.to_int(path, users_raw, column)
    bad = np.flatnonzero((ages < 0) | (ages > MAX_AGE))
    if bad.size:
        line = int(users_raw.index[bad[0]])
        raise DataError(path, f"age {ages[bad[0]]} outside [0, {MAX_AGE}] years", line=line, field=column)
    return ages


def age_bucket(ages: np.ndarray) -> np.ndarray:
    """Maps raw ages (years, >= 0) to the ML-1M age buckets, e.g. 24 -> '18-24', 17 -> 'under18'."""
    if np.any(np.asarray(ages) < 0):
        raise ValueError(f"ages must be >= 0, got {np.asarray(ages).min()}; check them with user_ages")
    lows = np.array([0] + [lo for lo, _ in AGE_BUCKETS[1:]])
    names = np.array([name for _, name in AGE_BUCKETS], dtype=object)
    return names[np.searchsorted(lows, ages, side="right") - 1]


def zip_prefix(zips: pd.Series) -> np.ndarray:
    """First character of the zip code, upper-cased ('85711' -> '8', 'T8H1N' -> 'T')."""
    return zips.str.strip().str.upper().str[:ZIP_PREFIX_LEN].replace("", "?").to_numpy(dtype=object)


def _assemble(ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
              ratings_path: str) -> pd.DataFrame:
    """Joins ratings with user and item features into the canonical columns.

    Args:
        ratings: columns user_id, item_id (str), rating (float), timestamp (int64).
        users: user_id, age_bucket, gender, occupation, zip_prefix.
        items: item_id, genres, release_year.
        ratings_path: for error messages.
    """
    for name, table, key in (("user", users, F.USER_ID), ("item", items, F.ITEM_ID)):
        unknown = ~ratings[key].isin(table[key])
        if unknown.any():
            line = int(ratings.index[np.flatnonzero(unknown.to_numpy())[0]])
            raise DataError(ratings_path, f"unknown {name} {ratings[key][line]!r} (not in the {name} file)",
                            line=line, field=key)
    frame = ratings.merge(users, on=F.USER_ID, how="left").merge(items, on=F.ITEM_ID, how="left")
    frame[F.LABEL] = (frame[F.RATING] >= POSITIVE_RATING).astype(np.int64)
    return frame[list(F.CANONICAL_COLUMNS)]


def _keyed(path: str, raw: pd.DataFrame, key: str) -> pd.DataFrame:
    """``raw`` with its ``key`` column stripped, checked unique in ``path`` (a user or item file)."""
    raw[key] = raw[key].str.strip()
    textio.check_unique(path, raw, [key], key)
    return raw


def _check_declared_counts(info_path: str, counts: Dict[str, Tuple[str, int]]) -> None:
    """Compares row counts with the ones ML-100K's ``u.info`` declares (skipped when it is absent).

    Args:
        info_path: the ``u.info`` file (``943 users`` / ``1682 items`` / ``100000 ratings``).
        counts: ``{"ratings": (file, rows read), ...}``.

    Raises:
        DataError: a file holds a different number of rows than declared (names that file).
    """
    if not os.path.lexists(info_path):
        return
    declared: Dict[str, int] = {}
    for line in textio.read_text(info_path, "ascii").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            declared[parts[1]] = int(parts[0])
    for what, (path, got) in counts.items():
        want = declared.get(what)
        if want is not None and want != got:
            raise DataError(path, f"{got:,} {what} where {os.path.basename(info_path)} declares {want:,}: "
                                  "the file is truncated or damaged; restore the complete dataset")


def _ratings_frame(path: str, raw: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        F.USER_ID: raw["user"].str.strip(),
        F.ITEM_ID: raw["item"].str.strip(),
        F.RATING: textio.to_float(path, raw, "rating"),
        F.TIMESTAMP: textio.to_timestamp(path, raw, "timestamp"),
    }, index=raw.index)
    textio.check_unique(path, out, [F.USER_ID, F.ITEM_ID, F.TIMESTAMP], "rating")
    bad = (out[F.RATING] < 0.5) | (out[F.RATING] > 5)
    if bad.any():
        line = int(out.index[np.flatnonzero(bad.to_numpy())[0]])
        raise DataError(path, f"rating {out[F.RATING][line]} outside [0.5, 5]", line=line, field="rating")
    return out


def _title_year(titles: pd.Series) -> pd.Series:
    """Year in a title such as 'Toy Story (1995)' (the film's year, as ML-1M and RecBole use); NaN if none."""
    return pd.to_numeric(titles.str.extract(r"\((\d{4})\)\s*$", expand=False), errors="coerce")


def _genre_string(flags: np.ndarray, names: List[str]) -> np.ndarray:
    """'|'-joined sorted genre names from a [items, genres] 0/1 matrix."""
    order = np.argsort(names)
    sorted_names = [names[i] for i in order]
    flags = flags[:, order]
    return np.array([F.GENRE_SEPARATOR.join(n for n, f in zip(sorted_names, row) if f) for row in flags],
                    dtype=object)


def read_ml100k(source: str) -> pd.DataFrame:
    """Reads ML-100K from ``source`` (u.data, u.user, u.item, u.genre) into canonical rows."""
    p = lambda name: os.path.join(source, name)  # noqa: E731
    ratings_raw = textio.parse_delimited(p("u.data"), textio.read_text(p("u.data"), "ascii"), "\t",
                                         ["user", "item", "rating", "timestamp"], require_final_newline=True)
    ratings = _ratings_frame(p("u.data"), ratings_raw)

    users_raw = _keyed(p("u.user"), textio.parse_delimited(
        p("u.user"), textio.read_text(p("u.user"), "ascii"), "|", ["user", "age", "gender", "occupation", "zip"]),
        "user")
    users = pd.DataFrame({
        F.USER_ID: users_raw["user"].str.strip(),
        F.AGE_BUCKET: age_bucket(user_ages(p("u.user"), users_raw)),
        F.GENDER: users_raw["gender"].str.strip().to_numpy(dtype=object),
        F.OCCUPATION: users_raw["occupation"].str.strip().to_numpy(dtype=object),
        F.ZIP_PREFIX: zip_prefix(users_raw["zip"]),
    })

    genre_raw = textio.parse_delimited(p("u.genre"), textio.read_text(p("u.genre"), "latin-1"), "|",
                                       ["name", "index"])
    genre_index = textio.to_int(p("u.genre"), genre_raw, "index")
    genre_names = list(genre_raw["name"].to_numpy()[np.argsort(genre_index, kind="stable")])
    cols = ["item", "title", "release", "video", "url"] + [f"g{i}" for i in range(len(genre_names))]
    items_raw = _keyed(p("u.item"), textio.parse_delimited(
        p("u.item"), textio.read_text(p("u.item"), "latin-1"), "|", cols), "item")
    flags = np.stack([textio.to_int(p("u.item"), items_raw, f"g{i}") for i in range(len(genre_names))], 1)
    year = _title_year(items_raw["title"]).fillna(pd.to_numeric(items_raw["release"].str[-4:], errors="coerce"))
    year = year.fillna(0).astype(np.int64)
    items = pd.DataFrame({
        F.ITEM_ID: items_raw["item"].str.strip(),
        F.GENRES: _genre_string(flags, genre_names),
        F.RELEASE_YEAR: year.to_numpy(),
    })
    _check_declared_counts(p("u.info"), {"ratings": (p("u.data"), len(ratings)),
                                         "users": (p("u.user"), len(users)), "items": (p("u.item"), len(items))})
    return _assemble(ratings, users, items, p("u.data"))


def read_recbole_ml100k(folder: str) -> pd.DataFrame:
    """Reads ML-100K in RecBole's atomic-file format (ml-100k.inter/.user/.item) into canonical rows."""
    p = lambda ext: os.path.join(folder, f"ml-100k.{ext}")  # noqa: E731
    inter = textio.parse_delimited(p("inter"), textio.read_text(p("inter"), "utf-8"), "\t",
                                   ["user", "item", "rating", "timestamp"], skip_header=True,
                                   require_final_newline=True)
    ratings = _ratings_frame(p("inter"), inter)
    users_raw = _keyed(p("user"), textio.parse_delimited(
        p("user"), textio.read_text(p("user"), "utf-8"), "\t", ["user", "age", "gender", "occupation", "zip"],
        skip_header=True), "user")
    users = pd.DataFrame({
        F.USER_ID: users_raw["user"].str.strip(),
        F.AGE_BUCKET: age_bucket(user_ages(p("user"), users_raw)),
        F.GENDER: users_raw["gender"].to_numpy(dtype=object),
        F.OCCUPATION: users_raw["occupation"].to_numpy(dtype=object),
        F.ZIP_PREFIX: zip_prefix(users_raw["zip"]),
    })
    items_raw = _keyed(p("item"), textio.parse_delimited(
        p("item"), textio.read_text(p("item"), "utf-8"), "\t", ["item", "title", "year", "genres"],
        skip_header=True), "item")
    genres = items_raw["genres"].str.split().map(lambda g: F.GENRE_SEPARATOR.join(sorted(g)))
    items = pd.DataFrame({
        F.ITEM_ID: items_raw["item"].str.strip(),
        F.GENRES: genres.to_numpy(dtype=object),
        F.RELEASE_YEAR: pd.to_numeric(items_raw["year"], errors="coerce").fillna(0).astype(np.int64).to_numpy(),
    })
    return _assemble(ratings, users, items, p("inter"))


def _read_ml1m_ratings(source: str) -> Tuple[str, pd.DataFrame]:
    for name in ("ratings.dat", "ratings.dat.gz", "ratings.users0001-2999.dat.gz"):
        path = os.path.join(source, name)
        if os.path.exists(path):
            break
    else:
        raise DataError(os.path.join(source, "ratings.dat"),
                        "file not found (also looked for ratings.dat.gz and ratings.users0001-2999.dat.gz)")
    if path.endswith(".gz"):
        textio.check_not_special(path)
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read()
        except OSError as err:
            raise DataError(path, textio.os_error_message(err)) from None
        except EOFError:
            raise DataError(path, "gzip stream ends early (a truncated copy?); restore the complete file") from None
        except zlib.error as err:
            raise DataError(path, f"damaged gzip data ({err}); restore the complete file") from None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as err:
            raise DataError(path, f"cannot decode byte {raw[err.start]:#04x} as ascii (unknown encoding?)",
                            line=raw[: err.start].count(b"\n") + 1) from None
    else:
        text = textio.read_text(path, "ascii")
    frame = textio.parse_delimited(path, text.replace("::", "\t"), "\t", ["user", "item", "rating", "timestamp"],
                                   require_final_newline=True)
    return path, _ratings_frame(path, frame)


def read_ml1m(source: str) -> pd.DataFrame:
    """Reads ML-1M (ratings with timestamps, users.dat, movies.dat) into canonical rows.

    Only ratings with timestamps are used: in ``../shared/data/movielens-1m`` that is
    ``ratings.users0001-2999.dat.gz`` (users 1-2999); a full ``ratings.dat`` is used when present.
    """
    ratings_path, ratings = _read_ml1m_ratings(source)
    upath = os.path.join(source, "users.dat")
    users_raw = _keyed(upath, textio.parse_delimited(
        upath, textio.read_text(upath, "latin-1").replace("::", "\t"), "\t",
        ["user", "gender", "age", "occupation", "zip"]), "user")
    age_codes = textio.to_int(upath, users_raw, "age")
    occ_codes = textio.to_int(upath, users_raw, "occupation")
    code_to_bucket: Dict[int, str] = dict(AGE_BUCKETS)
    for codes, known, field in ((age_codes, code_to_bucket, "age"), (occ_codes, range(len(ML1M_OCCUPATIONS)), "occupation")):
        bad = ~np.isin(codes, list(known))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(upath, f"unknown {field} code {codes[i]}", line=int(users_raw.index[i]), field=field)
    users = pd.DataFrame({
        F.USER_ID: users_raw["user"].str.strip(),
        F.AGE_BUCKET: np.array([code_to_bucket[c] for c in age_codes], dtype=object),
        F.GENDER: users_raw["gender"].to_numpy(dtype=object),
        F.OCCUPATION: np.array(ML1M_OCCUPATIONS, dtype=object)[occ_codes],
        F.ZIP_PREFIX: zip_prefix(users_raw["zip"]),
    })
    mpath = os.path.join(source, "movies.dat")
    movies_raw = _keyed(mpath, textio.parse_delimited(
        mpath, textio.read_text(mpath, "latin-1").replace("::", "\t"), "\t", ["item", "title", "genres"]), "item")
    year = _title_year(movies_raw["title"])
    items = pd.DataFrame({
        F.ITEM_ID: movies_raw["item"].str.strip(),
        F.GENRES: movies_raw["genres"].str.split("|").map(lambda g: F.GENRE_SEPARATOR.join(sorted(g))),
        F.RELEASE_YEAR: year.fillna(0).astype(np.int64).to_numpy(),
    })
    return _assemble(ratings, users, items, ratings_path)
