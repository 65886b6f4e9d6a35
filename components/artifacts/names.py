"""Type names of LiMAML's custom artifacts, without importing TFX (readers of ML Metadata use them).

Names carry the ``limaml.`` namespace, as ML Metadata and Kubeflow want; :mod:`components.artifacts.types`
declares the artifact classes with these names.
"""

META_EMBEDDINGS_TYPE = "limaml.MetaEmbeddings"
REPORT_TYPE = "limaml.Report"

# Custom property of a MetaEmbeddings artifact: the model version whose meta block made them.
MODEL_VERSION_PROPERTY = "model_version"
