"""The Beam protocol split equals the pandas protocol (the definition) on ML-100K and synthetic data."""
import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from components.protocol_example_gen.split import ApplyProtocol
from limaml.config import ProtocolConfig
from limaml.data import protocols, synthetic
from schema import features as F
from tests.conftest_data import ml100k_frame


def _key(row):
    return (row[F.USER_ID], row[F.ITEM_ID], int(row[F.TIMESTAMP]))


@pytest.mark.parametrize("dataset", ["ml100k", "synthetic"])
def test_beam_split_matches_pandas_protocol(dataset):
    if dataset == "ml100k":
        frame = ml100k_frame()
        cfg = ProtocolConfig(name="budget")
    else:
        frame = synthetic.generate(synthetic.SyntheticConfig(num_users=800, num_items=200, seed=3))
        cfg = ProtocolConfig(name="cutoff", cutoff_ts=int(frame[F.TIMESTAMP].quantile(0.7)))
    want = protocols.apply(frame, cfg)
    inter = want.interactions
    want_train = [_key(r) for r in inter[inter[protocols.ROLE].isin(protocols.TRAINABLE_ROLES)].to_dict("records")]
    want_eval = [_key(r) for r in inter[inter[protocols.ROLE] == "query"].to_dict("records")]
    want_users = [(u, c, int(k)) for u, c, k in zip(want.users[F.USER_ID], want.users[protocols.COHORT],
                                                   want.users["history_size"])]
    assert want_eval and want_train and not set(want_train) & set(want_eval)

    with beam.Pipeline() as p:
        splits = p | beam.Create(frame.to_dict("records")) | ApplyProtocol(cfg)
        assert_that(splits["train"] | "KT" >> beam.Map(_key), equal_to(want_train), label="train")
        assert_that(splits["eval"] | "KE" >> beam.Map(_key), equal_to(want_eval), label="eval")
        # Query rows carry the user's cohort and history size, as the pandas protocol assigns them.
        users = (splits["eval"]
                 | beam.Map(lambda r: (r[F.USER_ID], r[F.COHORT], int(r[F.HISTORY_SIZE])))
                 | beam.Distinct())
        assert_that(users, equal_to(want_users), label="users")


def test_row_serializer_writes_the_message_apis_deterministic_bytes():
    """Batched records equal ``to_example(row).SerializeToString(deterministic=True)`` byte
    for byte: None dropped, numpy scalars, UTF-8, negative ints, float32 rounding, rows of
    different columns in one batch, order kept."""
    from components.protocol_example_gen.examples import RowSerializer, to_example

    rows = [
        {"user_id": "ü1", "item_id": "i9", "timestamp": np.int64(1_700_000_000), "label": 1,
         "rating": 0.1, "genres": "Drama|Comedy", "release_year": -3, "oracle_prob": None},
        {"user_id": "u2", "item_id": "", "timestamp": 0, "label": np.int64(0),
         "rating": np.float64(4.0), "genres": "", "release_year": 1995, "oracle_prob": 0.3333},
        {"user_id": "u3", "item_id": "i1", "timestamp": 5, "label": 0, "rating": 1e-40,
         "genres": "Action", "release_year": 2000, "oracle_prob": None, "cohort": "1-4"},
        {"user_id": None},
        {"rating": 1e300, "release_year": -2**63, "label": True},  # float32 overflow: inf
        {"rating": 0.0, "oracle_prob": -0.0}, {"rating": -0.0, "oracle_prob": 0.0},  # signed 0
    ]
    serialize = RowSerializer()
    got = [serialize(r) for r in rows]
    want = [to_example(r).SerializeToString(deterministic=True) for r in rows]
    assert got == want
    with pytest.raises(ValueError, match="'nope' is not in the feature contract"):
        serialize({"nope": 1})
