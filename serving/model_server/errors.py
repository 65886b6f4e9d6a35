"""Constants and the error type of the TF Serving-compatible stand-in."""
from __future__ import annotations

from typing import Dict

import grpc
from tensorflow_serving.apis import get_model_status_pb2

MODEL_SERVER_BINARY = "tensorflow_model_server"
STAND_IN_KIND = "stand-in"  # ModelServerHandle.kind of the stand-in, in process or not
DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"
_SERVE_TAG = "serve"
_PREDICT_METHODS = (
    "tensorflow/serving/predict",
    "tensorflow/serving/classify",
    "tensorflow/serving/regress",
)
_State = get_model_status_pb2.ModelVersionStatus.State


class ServingError(Exception):
    """An error answered to the client with a gRPC status code, as TF Serving would."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# tensorflow.error.Code value -> grpc.StatusCode (same numbering).
_TF_TO_GRPC: Dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}
