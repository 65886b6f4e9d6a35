"""Cross-fitted evaluation: the folds partition the users, fold 0 of 5 is the one-split protocol's
user set, and the pooled result holds every user once with AUCs of the pooled rows."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from limaml.config import LimamlConfig, ProtocolConfig
from limaml.data import protocols
from limaml.data.synthetic import SyntheticConfig, generate
from schema import features as F
from trainer import crossfit


def test_user_fold_is_the_hash_digits_times_k_integer_divided_by_a_million():
    h = np.array([0, 199_999, 200_000, 5_999_999, 7_000_000 + 600_000, 10**12 + 999_999], np.uint64)
    assert protocols.user_fold(h, 5).tolist() == [0, 0, 1, 4, 3, 4]
    assert protocols.user_fold(h, 2).tolist() == [0, 0, 0, 1, 1, 1]


def test_folds_partition_the_users_and_fold_0_of_5_is_eval_fraction_0_2():
    ids = np.array([f"u{i}" for i in range(2000)], dtype=object)
    counts = np.random.RandomState(0).randint(1, 200, ids.size)
    by_fold = [set(protocols.budget_assignment(ids, counts, ProtocolConfig(eval_folds=5, eval_fold=k))
                   [F.USER_ID]) for k in range(5)]
    assert sum(len(s) for s in by_fold) == ids.size and set().union(*by_fold) == set(ids)
    assert all(300 < len(s) < 500 for s in by_fold)  # about 2000 / 5 each
    one_split = set(protocols.budget_assignment(ids, counts, ProtocolConfig())[F.USER_ID])
    assert by_fold[0] == one_split


@pytest.mark.parametrize("kwargs, message", [
    ({"eval_folds": 1}, "eval_folds 1 must be 0"),
    ({"eval_folds": 5, "eval_fold": 5}, r"eval_fold 5 must be in \[0, 5\)"),
    ({"eval_fold": 1}, r"eval_fold 1 must be in \[0, 1\)"),
    ({"eval_folds": 3, "name": "cutoff"}, "needs the budget protocol"),
])
def test_bad_fold_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProtocolConfig(**kwargs)


def test_cross_fitting_scores_every_user_once_on_its_own_fold_split():
    frame = generate(SyntheticConfig(num_users=150, num_items=40, mean_interactions=12, seed=3))
    cfg = LimamlConfig(dataset="synthetic", protocol=ProtocolConfig(name="budget", horizon=5))
    result = crossfit.run(frame, cfg, 3, models=["linear"], seeds=[0])
    users = np.asarray(result["users"]).astype(str)
    assert set(users) == set(frame[F.USER_ID].astype(str))  # every user evaluated ...
    # ... on exactly the query rows of its own fold's split, worked out here from the protocol
    expected = {}
    for k in range(3):
        s = protocols.apply(frame, crossfit.fold_config(cfg, 3, k).protocol)
        q = s.interactions[s.interactions[protocols.ROLE] == "query"]
        for u, n in q.groupby(F.USER_ID).size().items():
            assert str(u) not in expected
            expected[str(u)] = n
    got = dict(zip(*np.unique(users, return_counts=True)))
    assert got == expected
    y, s = np.asarray(result["labels"]), result["scores"]["linear"][0]
    assert result["auc"]["linear"][0]["overall"] == round(roc_auc_score(y, s), 4)
    assert result["oracle"]["overall"] == round(roc_auc_score(y, result["oracle_prob"]), 4)
    assert len(result["auc_per_fold"]["linear"]) == 3 and len(result["n_train"]) == 3


def test_merging_folds_that_share_a_user_is_refused():
    fold = {"users": np.array(["a", "b"]), "labels": np.array([0.0, 1.0]),
            "cohort": np.array(["0", "0"], dtype=object), "support_slice": np.array(["0", "0"]),
            "scores": {"m": {0: np.array([0.1, 0.9])}}, "auc": {"m": {0: {}}},
            "seconds": {"m": [1.0]}, "n_train": 1}
    other = dict(fold, users=np.array(["c", "b"]))
    with pytest.raises(ValueError, match="user b is evaluated in folds 0 and 1"):
        crossfit.merge_folds([fold, other], ["0"])
