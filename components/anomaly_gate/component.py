"""AnomalyGate as a Python-function component: fails the run on any data anomaly."""
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies

from components.anomaly_gate.check import check, read_anomalies


@component
def AnomalyGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:  # pylint: disable=invalid-name
    """Raises DataAnomaliesError (naming feature and problem) when ExampleValidator found anomalies."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    check(read_anomalies(anomalies.uri, splits))
