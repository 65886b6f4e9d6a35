"""Custom artifact types (names carry the ``limaml.`` namespace, as MLMD and Kubeflow want)."""
from tfx.types import artifact
from tfx.types.system_artifacts import Dataset

from components.artifacts.names import META_EMBEDDINGS_TYPE, REPORT_TYPE


class MetaEmbeddings(artifact.Artifact):
    """Per-user meta embeddings of one model version, as Parquet (``model_version=<v>/part-*.parquet``).

    Custom properties (custom, not typed ``PROPERTIES``: Kubeflow V2 compiles custom artifact
    types only without them):
        model_version: version of the model whose meta block produced the vectors.
        users: number of user records (the cold-start row excluded).
    """

    TYPE_NAME = META_EMBEDDINGS_TYPE
    TYPE_ANNOTATION = Dataset


class Report(artifact.Artifact):
    """The evaluation report: ``metrics.json`` and ``index.html``."""

    TYPE_NAME = REPORT_TYPE
