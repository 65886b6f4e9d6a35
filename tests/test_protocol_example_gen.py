"""The Beam protocol split equals the pandas protocol (the definition) on ML-100K and synthetic data."""
import apache_beam as beam
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
