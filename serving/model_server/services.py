"""The gRPC servicers (``PredictionService``, ``ModelService``) over a registry."""
from __future__ import annotations

import logging
from typing import Callable

import grpc
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving.model_server.errors import SIGNATURE_DEF_FIELD, ServingError
from serving.model_server.predict import run_predict
from serving.model_server.registry import ModelRegistry

log = logging.getLogger(__name__)


def _answer(context: grpc.ServicerContext, fn: Callable[[], object]):
    try:
        return fn()
    except ServingError as exc:
        err = exc
    except Exception:  # noqa: BLE001 - never kill the server thread; report INTERNAL
        log.exception("model server internal error")
        err = ServingError(grpc.StatusCode.INTERNAL, "internal error (details in the server log)")
    context.abort(err.code, err.message)


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        def run():
            if not request.HasField("model_spec"):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            return run_predict(self._registry.resolve(request.model_spec), request)

        return _answer(context, run)

    def GetModelMetadata(self, request, context):  # noqa: N802 - gRPC method name
        def run():
            if not request.HasField("model_spec"):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            if not request.metadata_field:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "GetModelMetadataRequest must specify at least one metadata_field",
                )
            for f in request.metadata_field:
                if f != SIGNATURE_DEF_FIELD:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {f} is not supported"
                    )
            servable = self._registry.resolve(request.model_spec)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sig in servable.signature_defs.items():
                sig_map.signature_def[key].CopyFrom(sig)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
            return response

        return _answer(context, run)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def GetModelStatus(self, request, context):  # noqa: N802 - gRPC method name
        def run():
            if not request.HasField("model_spec"):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            response = get_model_status_pb2.GetModelStatusResponse()
            for version, state, message in self._registry.status(request.model_spec):
                vs = response.model_version_status.add()
                vs.version = version
                vs.state = state
                if message:
                    vs.status.error_code = error_codes_pb2.UNKNOWN
                    vs.status.error_message = message
                else:
                    vs.status.error_code = error_codes_pb2.OK
            return response

        return _answer(context, run)
