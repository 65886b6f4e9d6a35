"""Synthetic generator: determinism, long tail, and the planted signal behind the oracle AUC."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from limaml.config import ProtocolConfig
from limaml.data import protocols, synthetic
from schema import features as F

CFG = synthetic.SyntheticConfig(num_users=3000, num_items=400, mean_interactions=15, seed=7)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic.generate(CFG)


def test_deterministic_under_seed(frame):
    again = synthetic.generate(CFG)
    pd.testing.assert_frame_equal(frame, again)
    other = synthetic.generate(synthetic.SyntheticConfig(**{**synthetic.config_dict(CFG), "seed": 8}))
    assert not frame[F.LABEL].head(1000).equals(other[F.LABEL].head(1000))


def test_long_tailed_activity(frame):
    per_user = frame.groupby(F.USER_ID).size()
    assert per_user.mean() == pytest.approx(CFG.mean_interactions, rel=0.2)
    assert per_user.median() < per_user.mean()          # right-skewed
    assert (per_user < 5).mean() > 0.2                   # many infrequent users
    assert per_user.max() >= 10 * per_user.median()      # and a long tail of heavy users


def test_labels_follow_oracle_probabilities(frame):
    # Bernoulli draws: the positive rate within probability bins matches the bin's mean probability.
    bins = pd.cut(frame[F.ORACLE_PROB], np.linspace(0, 1, 11))
    stats = frame.groupby(bins)[[F.LABEL, F.ORACLE_PROB]].mean().dropna()
    counts = frame.groupby(bins).size()[stats.index]
    big = counts > 500
    np.testing.assert_allclose(stats[F.LABEL][big], stats[F.ORACLE_PROB][big], atol=0.03)


def test_planted_signal_oracle_beats_user_blind_model(frame):
    split = protocols.apply(frame, ProtocolConfig(name="cutoff"))
    query = split.interactions[split.interactions[protocols.ROLE] == "query"]
    oracle_auc = roc_auc_score(query[F.LABEL], query[F.ORACLE_PROB])
    # A model that ignores the user: each item's mean click probability over all users (the best
    # user-blind score, computed from the training period's empirical click rate per item).
    hist = split.interactions[split.interactions[protocols.ROLE] == "history"]
    item_rate = hist.groupby(F.ITEM_ID)[F.LABEL].mean()
    blind = query[F.ITEM_ID].map(item_rate).fillna(hist[F.LABEL].mean())
    blind_auc = roc_auc_score(query[F.LABEL], blind)
    # Even the item's *true* mean probability over users is user-blind and must lose clearly.
    true_item_mean = frame.groupby(F.ITEM_ID)[F.ORACLE_PROB].mean()
    blind_true_auc = roc_auc_score(query[F.LABEL], query[F.ITEM_ID].map(true_item_mean))
    assert oracle_auc > 0.8
    assert oracle_auc > blind_true_auc + 0.1
    assert blind_true_auc >= blind_auc - 0.02
    # The meta features carry part of the preference: a demographic-group x item mean beats user-blind.
    group = [F.AGE_BUCKET, F.GENDER, F.OCCUPATION, F.ZIP_PREFIX, F.ITEM_ID]
    group_mean = frame.groupby(group)[F.ORACLE_PROB].mean().rename("g")
    demo_score = query.join(group_mean, on=group)["g"]
    assert roc_auc_score(query[F.LABEL], demo_score) > blind_true_auc


def test_oracle_probability_is_the_planted_formula():
    # Recompute p = sigmoid(signal * <u, v> / sqrt(d) + b_i + bias) from the generator's latents.
    world = synthetic.generate_world(CFG)
    f = world.frame
    u = world.user_vectors[f[F.USER_ID].str[1:].astype(int).to_numpy()]
    v = world.item_vectors[f[F.ITEM_ID].str[1:].astype(int).to_numpy()]
    b = world.item_bias[f[F.ITEM_ID].str[1:].astype(int).to_numpy()]
    logit = CFG.signal * (u * v).sum(1) / np.sqrt(CFG.latent_dim) + b + CFG.global_bias
    np.testing.assert_allclose(f[F.ORACLE_PROB], 1 / (1 + np.exp(-logit)), rtol=1e-12)


def test_genre_taste_adds_a_user_by_primary_genre_vector_and_changes_nothing_else():
    from limaml.data.synthetic import SyntheticConfig, generate_world

    base = SyntheticConfig(num_users=300, num_items=120, mean_interactions=12, seed=4)
    plain = generate_world(base)
    tasty = generate_world(dataclasses.replace(base, genre_taste=1.5))
    assert plain.genre_vectors is None and tasty.genre_vectors.shape == (300, 9, 8)
    np.testing.assert_array_equal(plain.user_vectors, tasty.user_vectors)
    same = ["user_id", "item_id", "timestamp", "genres"]
    pd.testing.assert_frame_equal(plain.frame[same], tasty.frame[same])
    f = tasty.frame
    u = f["user_id"].str[1:].astype(int).to_numpy()
    i = f["item_id"].str[1:].astype(int).to_numpy()
    g = tasty.primary_genre[i]
    # the primary genre is one of the item's listed genres (or "none")
    names = [("none" if k == 8 else f"genre{k}") for k in g[:200]]
    assert all(n in row.split("|") for n, row in zip(names, f["genres"].to_numpy()[:200]))
    vec = tasty.user_vectors[u] + tasty.genre_vectors[u, g]
    logit = 2.0 * np.sum(vec * tasty.item_vectors[i], axis=1) / np.sqrt(8) + tasty.item_bias[i] - 0.3
    np.testing.assert_allclose(f["oracle_prob"].to_numpy(), 1 / (1 + np.exp(-logit)), rtol=1e-12)
    # a user's taste now differs between genres: same user, different δ rows
    assert np.abs(tasty.genre_vectors[0, 0] - tasty.genre_vectors[0, 1]).max() > 0.1
