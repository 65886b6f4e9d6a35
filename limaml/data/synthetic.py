"""Synthetic interaction logs with planted per-user preferences and a known oracle.

Generative story (all vectorised, deterministic under ``seed``):

- Users have demographics (the same meta features as MovieLens). Their latent preference
  vector is ``u = A[age] + B[gender] + C[occupation] + D[zip] + user_noise * eps``: the meta
  features explain part of the taste, the rest is personal and must be learnt from history.
- Items have a latent vector ``v ~ N(0, I)``, a bias ``b``, genres (the latent dimensions that are
  strongly positive) and a release year.
- ``p(click | u, i) = sigmoid(signal * <u, v> / sqrt(dim) + b_i + global_bias)``; the label is a
  Bernoulli draw and ``oracle_prob`` records ``p``, so the best achievable AUC on any split is the
  AUC of ``oracle_prob``.
- Activity is long-tailed: interactions per user follow a truncated log-normal (many infrequent
  users); items are drawn by Zipf popularity; each user arrives at a random time and interacts
  uniformly between arrival and the end of the log, so a global cutoff sees users at every
  history size.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import numpy as np
import pandas as pd

from schema import features as F

START_TS = 1_600_000_000


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator.

    Attributes:
        num_users, num_items: population sizes.
        mean_interactions: mean interactions per user (log-normal, long-tailed).
        sigma_interactions: log-normal sigma of the activity (larger = longer tail).
        max_interactions: cap per user.
        latent_dim: dimension of the preference vectors.
        user_noise: scale of the personal part of the user vector (0 = demographics say all).
        signal: scale of the user-item affinity in the logit.
        global_bias: intercept of the logit.
        zipf: exponent of the item popularity.
        days: length of the log.
        seed: RNG seed.
        genre_taste: scale of a user × primary-genre taste (0 = none): user u meets an item of
            primary genre g with the vector ``user_vec[u] + genre_taste · δ[u, g]``,
            ``δ ~ N(0, I)``, drawn from a separate RNG stream (the rest of the log is the same
            as with 0). The primary genre is the item's genre flag with the largest latent
            coordinate (``"none"`` items have their own δ).
    """

    num_users: int = 5000
    num_items: int = 1000
    mean_interactions: float = 20.0
    sigma_interactions: float = 1.2
    max_interactions: int = 500
    latent_dim: int = 8
    user_noise: float = 1.0
    signal: float = 2.0
    global_bias: float = -0.3
    zipf: float = 0.8
    days: int = 120
    seed: int = 0
    genre_taste: float = 0.0


_AGES = ("under18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_GENDERS = ("F", "M")
_OCCUPATIONS = tuple(f"occ{i:02d}" for i in range(12))
_ZIPS = tuple(str(i) for i in range(10))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclasses.dataclass(frozen=True)
class World:
    """The generated log and the latent truth behind it.

    Attributes:
        frame: canonical interactions plus ``oracle_prob``.
        user_vectors: [users, latent_dim] preference of user ``u<k>`` at row k.
        item_vectors: [items, latent_dim] latent vector of item ``i<k>`` at row k.
        item_bias: [items] item bias.
        primary_genre: [items] index of the item's primary genre (``latent_dim`` = "none").
        genre_vectors: [users, latent_dim + 1, latent_dim] user × primary-genre taste δ, already
            scaled by ``genre_taste`` (None when it is 0).
        demographic_vectors: [users, latent_dim] the part of ``user_vectors`` the demographics
            explain (``A[age] + B[gender] + C[occupation] + D[zip]``); the rest is
            ``user_noise · N(0, I)``.
    """

    frame: pd.DataFrame
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    item_bias: np.ndarray
    primary_genre: Optional[np.ndarray] = None
    genre_vectors: Optional[np.ndarray] = None
    demographic_vectors: Optional[np.ndarray] = None


def generate(cfg: SyntheticConfig = SyntheticConfig()) -> pd.DataFrame:
    """Generates canonical interactions (plus ``oracle_prob``, the true click probability)."""
    return generate_world(cfg).frame


def generate_world(cfg: SyntheticConfig = SyntheticConfig()) -> World:
    """Generates the log and returns it with its latent truth (see :class:`World`)."""
    rng = np.random.default_rng(cfg.seed)
    d = cfg.latent_dim
    # Users: demographics and latent taste.
    demo = {name: rng.integers(0, len(vals), cfg.num_users)
            for name, vals in ((F.AGE_BUCKET, _AGES), (F.GENDER, _GENDERS),
                               (F.OCCUPATION, _OCCUPATIONS), (F.ZIP_PREFIX, _ZIPS))}
    tables = {name: rng.normal(0.0, 0.6, (len(vals), d))
              for name, vals in ((F.AGE_BUCKET, _AGES), (F.GENDER, _GENDERS),
                                 (F.OCCUPATION, _OCCUPATIONS), (F.ZIP_PREFIX, _ZIPS))}
    demo_vec = sum(tables[name][demo[name]] for name in tables)
    user_vec = demo_vec + cfg.user_noise * rng.normal(0.0, 1.0, (cfg.num_users, d))
    # Items.
    item_vec = rng.normal(0.0, 1.0, (cfg.num_items, d))
    item_bias = rng.normal(0.0, 0.5, cfg.num_items)
    popularity = 1.0 / np.arange(1, cfg.num_items + 1) ** cfg.zipf
    popularity = popularity[rng.permutation(cfg.num_items)]
    popularity /= popularity.sum()
    genre_names = np.array([f"genre{k}" for k in range(d)], dtype=object)
    genre_flags = item_vec > 1.0
    genres = np.array([F.GENRE_SEPARATOR.join(genre_names[row]) or "none" for row in genre_flags], dtype=object)
    years = rng.integers(1950, 2021, cfg.num_items)
    # Activity: long-tailed counts, arrival times.
    mu = np.log(cfg.mean_interactions) - cfg.sigma_interactions ** 2 / 2
    counts = np.clip(np.round(rng.lognormal(mu, cfg.sigma_interactions, cfg.num_users)), 1,
                     cfg.max_interactions).astype(np.int64)
    users = np.repeat(np.arange(cfg.num_users), counts)
    n = users.size
    items = rng.choice(cfg.num_items, size=n, p=popularity)
    span = cfg.days * 86400
    arrival = rng.uniform(0, span * 0.9, cfg.num_users)
    ts = (START_TS + arrival[users] + rng.uniform(0, 1, n) * (span - arrival[users])).astype(np.int64)
    # Click probabilities and labels.
    affinity = np.einsum("nd,nd->n", user_vec[users], item_vec[items]) / np.sqrt(d)
    primary = np.where(genre_flags.any(axis=1),
                       np.argmax(np.where(genre_flags, item_vec, -np.inf), axis=1), d)
    delta = None
    if cfg.genre_taste > 0:
        genre_rng = np.random.default_rng([cfg.seed, 13])
        delta = cfg.genre_taste * genre_rng.normal(0.0, 1.0, (cfg.num_users, d + 1, d))
        affinity += np.einsum("nd,nd->n", delta[users, primary[items]], item_vec[items]) / np.sqrt(d)
    prob = _sigmoid(cfg.signal * affinity + item_bias[items] + cfg.global_bias)
    label = (rng.uniform(0, 1, n) < prob).astype(np.int64)

    frame = pd.DataFrame({
        F.USER_ID: np.char.add("u", np.arange(cfg.num_users).astype(str)).astype(object)[users],
        F.ITEM_ID: np.char.add("i", np.arange(cfg.num_items).astype(str)).astype(object)[items],
        F.TIMESTAMP: ts,
        F.LABEL: label,
        F.RATING: label.astype(np.float64),
        F.AGE_BUCKET: np.array(_AGES, dtype=object)[demo[F.AGE_BUCKET]][users],
        F.GENDER: np.array(_GENDERS, dtype=object)[demo[F.GENDER]][users],
        F.OCCUPATION: np.array(_OCCUPATIONS, dtype=object)[demo[F.OCCUPATION]][users],
        F.ZIP_PREFIX: np.array(_ZIPS, dtype=object)[demo[F.ZIP_PREFIX]][users],
        F.GENRES: genres[items],
        F.RELEASE_YEAR: years[items],
        F.ORACLE_PROB: prob,
    })
    # A user can meet the same item twice at the same second only by chance; keep the first.
    frame = frame.drop_duplicates([F.USER_ID, F.ITEM_ID, F.TIMESTAMP]).reset_index(drop=True)
    return World(frame, user_vec, item_vec, item_bias, primary, delta, demo_vec)


def config_dict(cfg: SyntheticConfig) -> Dict[str, float]:
    """The generator's settings, for the manifest."""
    return dataclasses.asdict(cfg)
