"""The curated schema.pbtxt and schema/features.py describe the same record."""
import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from schema import features as F


def test_schema_matches_feature_module():
    schema = tfdv.load_schema_text(F.schema_path())
    types = {"str": schema_pb2.BYTES, "int64": schema_pb2.INT, "float64": schema_pb2.FLOAT}
    got = {f.name: (f.type, f.presence.min_fraction) for f in schema.feature}
    want = {**{n: (types[k], 1.0) for n, k in F.CANONICAL_COLUMNS.items()},
            **{n: (types[k], 0.0) for n, k in {**F.OPTIONAL_COLUMNS, **F.PROTOCOL_COLUMNS}.items()}}
    assert got == want


def test_schema_flags_a_missing_feature_and_a_bad_label():
    schema = tfdv.load_schema_text(F.schema_path())
    row = {F.USER_ID: "1", F.ITEM_ID: "2", F.TIMESTAMP: 5, F.LABEL: 1, F.RATING: 4.0, F.AGE_BUCKET: "18-24",
           F.GENDER: "M", F.OCCUPATION: "x", F.ZIP_PREFIX: "8", F.GENRES: "Drama", F.RELEASE_YEAR: 1995}
    good = pd.DataFrame([row] * 3)
    assert not tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(good), schema).anomaly_info
    missing = tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(good.drop(columns=[F.GENRES])), schema)
    assert set(missing.anomaly_info) == {F.GENRES}
    bad = tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(good.assign(label=[0, 1, 7])), schema)
    assert set(bad.anomaly_info) == {F.LABEL}
