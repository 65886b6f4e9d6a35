"""Reads ExampleValidator's anomalies and names them."""
from __future__ import annotations

import os
from typing import Dict, List

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2


class DataAnomaliesError(RuntimeError):
    """The input data does not match the schema; the message names every anomaly."""


def read_anomalies(anomalies_uri: str, split_names: List[str]) -> Dict[str, anomalies_pb2.Anomalies]:
    """Anomalies per split from an ExampleAnomalies artifact folder."""
    out = {}
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", "SchemaDiff.pb")
        proto = anomalies_pb2.Anomalies()
        with tf.io.gfile.GFile(path, "rb") as f:
            proto.ParseFromString(f.read())
        out[split] = proto
    return out


def check(anomalies: Dict[str, anomalies_pb2.Anomalies]) -> None:
    """Raises DataAnomaliesError naming each feature and problem, if there is any."""
    problems = []
    for split, proto in sorted(anomalies.items()):
        for feature, info in sorted(proto.anomaly_info.items()):
            reasons = "; ".join(r.description or r.short_description for r in info.reason) or info.description
            problems.append(f"split {split!r}, feature {feature!r}: {reasons}")
        if proto.HasField("dataset_anomaly_info"):
            problems.append(f"split {split!r}, dataset: {proto.dataset_anomaly_info.description}")
    if problems:
        raise DataAnomaliesError("input data does not match schema/schema.pbtxt, stopping before training:\n  - "
                                 + "\n  - ".join(problems))
