"""TF Serving-compatible gRPC model server (the stand-in for ``tensorflow_model_server``).

Production serves the global block with TF Serving (DESIGN.md section 4). Where the
``tensorflow_model_server`` binary is not on PATH (dev machines, CI), this module serves the same
model directories over the same gRPC API, so clients cannot tell the difference:

* Layout: ``<base_path>/<version>/saved_model.pb`` with integer version directories, or a model
  config file in TF Serving's ``model_config_list`` text format
  (``tensorflow_serving.config.model_server_config_pb2.ModelServerConfig``) listing several
  models, each with ``name``, ``base_path``, ``model_version_policy`` (``latest {num_versions}``,
  ``all {}``, ``specific {versions}``; default latest 1) and ``version_labels``.
* The base paths are polled (``poll_interval_s``, TF Serving's
  ``--file_system_poll_wait_seconds``, default 1 s): new versions are loaded, versions that the
  policy no longer wants are unloaded after the new ones are available.
* ``tensorflow.serving.PredictionService``: ``Predict`` and ``GetModelMetadata``;
  ``tensorflow.serving.ModelService``: ``GetModelStatus``. Other methods answer UNIMPLEMENTED.

Status codes and messages follow TF Serving (``predict_util.cc``, ``get_model_metadata_impl.cc``,
``get_model_status_impl.cc``, ``basic_manager.cc``):

    request                               code                 message
    no model_spec                         INVALID_ARGUMENT     Missing ModelSpec
    unknown model / version (Predict,     NOT_FOUND            Servable not found for request:
      GetModelMetadata)                                        Latest(name) | Specific(name, v)
    unknown version label                 INVALID_ARGUMENT     Unrecognized servable version label: l
    unknown signature                     FAILED_PRECONDITION  Serving signature key "s" not found.
    wrong set of input names              INVALID_ARGUMENT     input size does not match signature: ...
    input of the wrong dtype / shape      INVALID_ARGUMENT     (names the input, expected and got)
    unknown output_filter alias           INVALID_ARGUMENT     output tensor alias not found in ...
    metadata_field empty / not
      "signature_def"                     INVALID_ARGUMENT     (as TF Serving)
    GetModelStatus unknown model          NOT_FOUND            Could not find any versions of model m
    GetModelStatus unknown version        NOT_FOUND            Could not find version v of model m

Predict converts each input ``TensorProto`` with ``tf.make_ndarray``, calls the SavedModel
signature, and returns the outputs (all, or those named in ``output_filter``) as typed proto
fields, like TF Serving's default ``AsProtoField`` serialization.

Entry points:

* ``start_model_server(base_dir, model_name, port=0)``: the stand-in, in this process.
* ``launch_model_server(...)``: the real binary when on PATH (a subprocess), else the stand-in;
  either way it returns once every model has an AVAILABLE version and gives a
  ``ModelServerHandle`` (``port``, ``target``, ``stop()``).
* ``python -m serving.model_server --port=8500 --model_name=m --model_base_path=/models/m``
  (or ``--model_config_file=...``): the stand-in with TF Serving's flag names.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server_guard import (
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_MESSAGE_BYTES,
    TensorCheckError,
    TokenAuthInterceptor,
    check_tensor_proto,
    read_token,
)

log = logging.getLogger(__name__)

MODEL_SERVER_BINARY = "tensorflow_model_server"
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


# --------------------------------------------------------------------------- configuration


def load_model_config_file(path: str) -> List[model_server_config_pb2.ModelConfig]:
    """Parses a TF Serving model config file (``ModelServerConfig`` text proto).

    Args:
        path: the file, e.g. ``model_config_list { config { name: "m" base_path: "/m" } }``.

    Returns:
        The model configs, base paths made absolute.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it does not parse, holds no ``model_config_list``, a model has no name or
            base_path, a name repeats, or a platform other than ``tensorflow`` is asked for.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model config file {path!r} does not exist")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ValueError(
            f"model config file {path!r} is not a ModelServerConfig text proto: {exc}"
        ) from exc
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(
            f"model config file {path!r} has no model_config_list; write "
            'model_config_list { config { name: "..." base_path: "..." } }'
        )
    models = list(config.model_config_list.config)
    if not models:
        raise ValueError(f"model config file {path!r} lists no model")
    seen = set()
    for mc in models:
        if not mc.name or not mc.base_path:
            raise ValueError(
                f"model config file {path!r}: every config needs a name and a base_path; got "
                f"{text_format.MessageToString(mc, as_one_line=True)!r}"
            )
        if mc.name in seen:
            raise ValueError(f"model config file {path!r}: model name {mc.name!r} appears twice")
        seen.add(mc.name)
        if mc.model_platform and mc.model_platform != "tensorflow":
            raise ValueError(
                f"model {mc.name!r}: model_platform {mc.model_platform!r} is not supported; "
                "use 'tensorflow'"
            )
        mc.base_path = _abs_path(mc.base_path)
    return models


def _abs_path(path: str) -> str:
    # Local paths become absolute; URLs (gs://, s3://, hdfs://) stay as they are.
    return path if "://" in path else os.path.abspath(path)


def single_model_config(base_path: str, model_name: str) -> model_server_config_pb2.ModelConfig:
    """Returns the config TF Serving builds from ``--model_name``/``--model_base_path``."""
    if not model_name:
        raise ValueError("model_name is empty; pass the name clients put in model_spec.name")
    return model_server_config_pb2.ModelConfig(
        name=model_name, base_path=_abs_path(base_path), model_platform="tensorflow"
    )


def list_versions(base_path: str) -> List[int]:
    """Integer version directories under ``base_path``, ascending (others are ignored).

    ``base_path`` may be local or any filesystem ``tf.io.gfile`` reads (``gs://``...).
    """
    try:
        names = tf.io.gfile.listdir(base_path)
    except (tf.errors.OpError, OSError):
        return []
    out = []
    for name in names:
        name = name.rstrip("/")
        if name.isdigit() and tf.io.gfile.isdir(os.path.join(base_path, name)):
            out.append(int(name))
    return sorted(out)


def aspired_versions(mc: model_server_config_pb2.ModelConfig, available: Sequence[int]) -> List[int]:
    """The versions the model's version policy wants loaded, out of those on disk."""
    policy = mc.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return sorted(available)
    if which == "specific":
        wanted = set(policy.specific.versions)
        return sorted(v for v in available if v in wanted)
    num = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return sorted(available)[-num:] if available else []


# --------------------------------------------------------------------------- servables


@dataclass
class Servable:
    """One loaded model version.

    Attributes:
        name: model name.
        version: version number.
        path: the SavedModel directory.
        signature_defs: signature key -> ``SignatureDef`` of the ``serve`` meta graph.
        functions: signature key -> callable concrete function.
    """

    name: str
    version: int
    path: str
    signature_defs: Dict[str, meta_graph_pb2.SignatureDef]
    functions: Dict[str, Callable]
    _module: object = field(default=None, repr=False)


def _read_signature_defs(path: str) -> Dict[str, meta_graph_pb2.SignatureDef]:
    pb_path = os.path.join(path, "saved_model.pb")
    pbtxt_path = os.path.join(path, "saved_model.pbtxt")
    sm = saved_model_pb2.SavedModel()
    if tf.io.gfile.exists(pb_path):
        with tf.io.gfile.GFile(pb_path, "rb") as fh:
            sm.ParseFromString(fh.read())
    elif tf.io.gfile.exists(pbtxt_path):
        with tf.io.gfile.GFile(pbtxt_path, "r") as fh:
            text_format.Parse(fh.read(), sm)
    else:
        raise FileNotFoundError(f"no saved_model.pb or saved_model.pbtxt in {path!r}")
    for mg in sm.meta_graphs:
        if _SERVE_TAG in mg.meta_info_def.tags:
            return dict(mg.signature_def)
    raise ValueError(f"SavedModel {path!r} has no meta graph tagged {_SERVE_TAG!r}")


def load_servable(name: str, version: int, path: str) -> Servable:
    """Loads one SavedModel version for serving."""
    sig_defs = _read_signature_defs(path)
    module = tf.saved_model.load(path, tags=[_SERVE_TAG])
    functions = dict(module.signatures)
    return Servable(name, version, path, sig_defs, functions, module)


def _servable_request_string(name: str, version: Optional[int]) -> str:
    # ServableRequest::DebugString in TF Serving.
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


class _Model:
    """The loaded versions and the state history of one model."""

    def __init__(self, config: model_server_config_pb2.ModelConfig) -> None:
        self.config = config
        self.available: Dict[int, Servable] = {}
        # version -> (state, error message)
        self.states: Dict[int, Tuple[int, str]] = {}


class ModelRegistry:
    """Holds the models of a server, loads/unloads versions by policy, resolves model specs.

    A version directory without ``saved_model.pb`` yet is skipped until it has one; a version
    that fails to load is retried with a backoff (``LOAD_RETRY_S`` doubling up to 60 s). Loaded
    versions the policy no longer wants are unloaded only once a wanted version is available,
    so a broken push does not take the model down.

    Args:
        configs: one ``ModelConfig`` per model.
    """

    LOAD_RETRY_S = 2.0

    def __init__(self, configs: Sequence[model_server_config_pb2.ModelConfig]) -> None:
        self._lock = threading.Lock()
        self._models: Dict[str, _Model] = {mc.name: _Model(mc) for mc in configs}
        # (model, version) -> (monotonic time of the next load attempt, current backoff)
        self._failed: Dict[Tuple[str, int], Tuple[float, float]] = {}

    def model_names(self) -> List[str]:
        """Names of the configured models."""
        return list(self._models)

    def refresh(self) -> None:
        """Scans every base path once: loads newly aspired versions, then unloads the rest."""
        for model in self._models.values():
            mc = model.config
            # Directories without saved_model.pb yet (a push in progress) are not versions yet.
            on_disk = [v for v in list_versions(mc.base_path)
                       if _has_saved_model(os.path.join(mc.base_path, str(v)))]
            wanted = aspired_versions(mc, on_disk)
            if not on_disk and not model.available:
                log.warning(
                    "no versions of servable %s found under base path %s (expected integer "
                    "version directories holding saved_model.pb)", mc.name, mc.base_path
                )
            for version in wanted:
                if version in model.available:
                    continue
                path = os.path.join(mc.base_path, str(version))
                retry_at, backoff = self._failed.get((mc.name, version), (0.0, 0.0))
                if time.monotonic() < retry_at:
                    continue
                with self._lock:
                    model.states[version] = (_State.LOADING, "")
                try:
                    servable = load_servable(mc.name, version, path)
                except Exception as exc:  # noqa: BLE001 - any load failure ends this version
                    backoff = min(max(2 * backoff, self.LOAD_RETRY_S), 60.0)
                    log.error("failed to load %s version %d from %s (retrying in %.0f s): %s",
                              mc.name, version, path, backoff, exc)
                    self._failed[(mc.name, version)] = (time.monotonic() + backoff, backoff)
                    with self._lock:
                        model.states[version] = (_State.END, f"failed to load: {exc}")
                    continue
                self._failed.pop((mc.name, version), None)
                with self._lock:
                    model.available[version] = servable
                    model.states[version] = (_State.AVAILABLE, "")
                log.info("loaded servable %s version %d from %s", mc.name, version, servable.path)
            with self._lock:
                if not any(v in model.available for v in wanted):
                    continue  # availability first: keep serving until a wanted version loads
                for version in list(model.available):
                    if version not in wanted:
                        del model.available[version]
                        model.states[version] = (_State.END, "")
                        log.info("unloaded servable %s version %d", mc.name, version)

    def resolve(self, model_spec) -> Servable:
        """Finds the servable a ``ModelSpec`` asks for (version, label or latest).

        Raises:
            ServingError: NOT_FOUND / INVALID_ARGUMENT as TF Serving answers.
        """
        name = model_spec.name
        version: Optional[int] = None
        model = self._models.get(name)
        which = model_spec.WhichOneof("version_choice")
        if which == "version":
            version = int(model_spec.version.value)
        elif which == "version_label":
            label = model_spec.version_label
            labels = model.config.version_labels if model is not None else {}
            if label not in labels:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Unrecognized servable version label: {label}",
                )
            version = int(labels[label])
        with self._lock:
            servable = None
            if model is not None and model.available:
                if version is None:
                    servable = model.available[max(model.available)]
                else:
                    servable = model.available.get(version)
        if servable is None:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                "Servable not found for request: " + _servable_request_string(name, version),
            )
        return servable

    def status(self, model_spec) -> List[Tuple[int, int, str]]:
        """``(version, state, error message)`` for GetModelStatus, newest first.

        Raises:
            ServingError: NOT_FOUND with TF Serving's messages.
        """
        name = model_spec.name
        model = self._models.get(name)
        with self._lock:
            states = dict(model.states) if model is not None else {}
        if model_spec.WhichOneof("version_choice") == "version":
            version = int(model_spec.version.value)
            if version not in states:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}"
                )
            return [(version, *states[version])]
        if not states:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}"
            )
        return [(v, *states[v]) for v in sorted(states, reverse=True)]


def _has_saved_model(path: str) -> bool:
    return any(tf.io.gfile.exists(os.path.join(path, f))
               for f in ("saved_model.pb", "saved_model.pbtxt"))


# --------------------------------------------------------------------------- tensors


def _dtype_name(enum_value: int) -> str:
    return types_pb2.DataType.Name(enum_value)


def tensor_to_proto_field(value: np.ndarray) -> tensor_pb2.TensorProto:
    """Encodes an array in typed repeated fields (TF Serving's ``AsProtoField``)."""
    arr = np.asarray(value)
    dtype = tf.as_dtype(arr.dtype if arr.dtype != object else tf.string)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    proto.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in arr.shape]
        )
    )
    flat = arr.reshape(-1)
    if dtype == tf.float32:
        proto.float_val.extend(flat.tolist())
    elif dtype == tf.float64:
        proto.double_val.extend(flat.tolist())
    elif dtype in (tf.int32, tf.int16, tf.int8, tf.uint8, tf.uint16):
        proto.int_val.extend(flat.tolist())
    elif dtype == tf.int64:
        proto.int64_val.extend(flat.tolist())
    elif dtype == tf.bool:
        proto.bool_val.extend(flat.tolist())
    elif dtype == tf.string:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        return tf.make_tensor_proto(arr)
    return proto


def _verify_inputs(signature: meta_graph_pb2.SignatureDef, request) -> None:
    sent = set(request.inputs.keys())
    want = set(signature.inputs.keys())
    if len(sent) > len(want) or (len(sent) < len(want) and not signature.defaults):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(want)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(want))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - want))}}}. "
            f"Missing but required: {{{','.join(sorted(want - sent))}}}.",
        )
    for alias in sorted(sent):
        if alias not in signature.inputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                f"the set {{{','.join(sorted(want))}}}.",
            )
        got, expected = request.inputs[alias].dtype, signature.inputs[alias].dtype
        if got != expected:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{alias}] to be {_dtype_name(expected)} but {_dtype_name(got)} is "
                f"provided; send input '{alias}' as {_dtype_name(expected)}",
            )


def _output_aliases(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]) -> List[str]:
    if not output_filter:
        return list(signature.outputs.keys())
    seen: List[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{','.join(sorted(signature.outputs.keys()))}}}.",
            )
        if alias in seen:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}"
            )
        seen.append(alias)
    return seen


def run_predict(servable: Servable, request) -> predict_pb2.PredictResponse:
    """Runs one ``PredictRequest`` against a loaded servable.

    Raises:
        ServingError: with TF Serving's status codes.
    """
    sig_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(sig_name)
    fn = servable.functions.get(sig_name)
    if signature is None or fn is None:
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{sig_name}" not found.'
        )
    if signature.method_name and signature.method_name not in _PREDICT_METHODS:
        raise ServingError(
            grpc.StatusCode.INTERNAL,
            "Expected prediction signature method_name to be one of {"
            + ", ".join(_PREDICT_METHODS) + "}. Was: " + signature.method_name,
        )
    _verify_inputs(signature, request)
    aliases = _output_aliases(signature, list(request.output_filter))
    kwargs = {}
    for alias, proto in request.inputs.items():
        try:
            check_tensor_proto(alias, proto, DEFAULT_MAX_ELEMENTS)
        except TensorCheckError as exc:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        try:
            arr = tf.make_ndarray(proto)
        except Exception as exc:  # noqa: BLE001 - malformed TensorProto
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"input '{alias}' is not a valid tensor: {exc}"
            ) from exc
        kwargs[alias] = tf.constant(arr, dtype=tf.as_dtype(signature.inputs[alias].dtype))
    try:
        outputs = fn(**kwargs)
    except tf.errors.OpError as exc:
        raise ServingError(_TF_TO_GRPC.get(exc.error_code, grpc.StatusCode.UNKNOWN), exc.message) from exc
    except (TypeError, ValueError) as exc:
        # The concrete function rejects inputs whose shape does not fit the signature.
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = sig_name
    for alias in aliases:
        response.outputs[alias].CopyFrom(tensor_to_proto_field(outputs[alias].numpy()))
    return response


# --------------------------------------------------------------------------- gRPC services


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


# --------------------------------------------------------------------------- servers


class ModelServerHandle:
    """A running model server (stand-in or real binary): where it listens and how to stop it.

    Attributes:
        port: the gRPC port on 127.0.0.1.
        kind: ``"stand-in"`` or ``"tensorflow_model_server"``.
    """

    def __init__(self, port: int, kind: str, stop_fn: Callable[[float], None],
                 host: str = "127.0.0.1", socket_path: Optional[str] = None) -> None:
        self.port = port
        self.kind = kind
        self.host = host
        self.socket_path = socket_path
        self._stop_fn = stop_fn
        self._stopped = False

    @property
    def target(self) -> str:
        """gRPC target: ``"unix:<path>"`` when serving on a UNIX socket (the real binary on
        loopback), else ``"127.0.0.1:<port>"``."""
        if self.socket_path:
            return f"unix:{self.socket_path}"
        return f"127.0.0.1:{self.port}"

    def stop(self, grace_s: float = 0.5) -> None:
        """Stops the server; idempotent."""
        if not self._stopped:
            self._stopped = True
            self._stop_fn(grace_s)

    def __enter__(self) -> "ModelServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ModelServerHandle(kind={self.kind!r}, target={self.target!r})"


def serve_models(
    configs: Sequence[model_server_config_pb2.ModelConfig],
    port: int = 0,
    host: str = "127.0.0.1",
    poll_interval_s: Optional[float] = 1.0,
    max_workers: int = 8,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    auth_token: Optional[str] = None,
    grpc_socket_path: Optional[str] = None,
) -> ModelServerHandle:
    """Starts the stand-in server for the given models, in this process.

    Versions present on disk are loaded before this returns.

    Args:
        configs: the models.
        port: port to listen on; 0 picks a free one (see ``handle.port``).
        host: interface to bind (default: this machine only; ``"0.0.0.0"`` for all, as TF
            Serving does).
        poll_interval_s: seconds between scans of the base paths for new versions; None or 0
            disables polling.
        max_workers: gRPC handler threads.
        max_message_bytes: largest request or response message (larger: RESOURCE_EXHAUSTED).
        auth_token: with a token, every RPC needs ``authorization: Bearer <token>`` metadata.
        grpc_socket_path: also listen on this UNIX socket (TF Serving's flag).

    Returns:
        The handle.

    Raises:
        RuntimeError: if the port cannot be bound.
    """
    registry = ModelRegistry(configs)
    registry.refresh()
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tfs"),
        options=[("grpc.max_receive_message_length", int(max_message_bytes)),
                 ("grpc.max_send_message_length", int(max_message_bytes)),
                 ("grpc.so_reuseport", 0)],
        interceptors=[TokenAuthInterceptor(auth_token)] if auth_token else None,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(registry), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(registry), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise RuntimeError(f"cannot bind the model server to {host}:{port}: {exc}") from exc
    if not bound:
        raise RuntimeError(f"cannot bind the model server to {host}:{port}; choose a free port")
    if grpc_socket_path:
        server.add_insecure_port(f"unix:{grpc_socket_path}")
    server.start()
    stop_event = threading.Event()

    def poll() -> None:
        while not stop_event.wait(poll_interval_s):
            try:
                registry.refresh()
            except Exception:  # noqa: BLE001 - keep polling
                log.exception("model server: refreshing versions failed")

    if poll_interval_s:
        threading.Thread(target=poll, name="tfs-poll", daemon=True).start()

    def stop(grace_s: float) -> None:
        stop_event.set()
        server.stop(grace_s).wait()

    log.info("stand-in model server for %s on %s:%d", registry.model_names(), host, bound)
    return ModelServerHandle(bound, "stand-in", stop, host=host)


def start_model_server(
    base_dir: str,
    model_name: str,
    port: int = 0,
    poll_interval_s: Optional[float] = 1.0,
) -> ModelServerHandle:
    """Serves ``<base_dir>/<version>/`` as ``model_name`` with the in-process stand-in.

    Args:
        base_dir: model base path in TF Serving layout.
        model_name: the name clients put in ``model_spec.name``.
        port: port on 127.0.0.1; 0 picks a free one.
        poll_interval_s: seconds between scans for new versions (None/0: never).

    Returns:
        The handle (``port``, ``target``, ``stop()``).
    """
    return serve_models([single_model_config(base_dir, model_name)], port=port,
                        poll_interval_s=poll_interval_s)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_available(
    target: str, model_names: Sequence[str], timeout_s: float,
    alive: Callable[[], Optional[str]] = lambda: None, auth_token: Optional[str] = None,
) -> None:
    """Polls GetModelStatus until every model has an AVAILABLE version.

    Args:
        target: gRPC target.
        model_names: models to wait for.
        timeout_s: how long to wait.
        alive: returns an error message when the server process died (stop waiting).

    Raises:
        TimeoutError: naming the models still not available.
        RuntimeError: if ``alive`` reports the server died.
    """
    deadline = time.monotonic() + timeout_s
    pending = list(model_names)
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        last = ""
        while pending:
            died = alive()
            if died:
                raise RuntimeError(died)
            name = pending[0]
            req = get_model_status_pb2.GetModelStatusRequest()
            req.model_spec.name = name
            try:
                resp = stub.GetModelStatus(
                    req, timeout=2.0,
                    metadata=(("authorization", f"Bearer {auth_token}"),) if auth_token else None)
                if any(s.state == _State.AVAILABLE for s in resp.model_version_status):
                    pending.pop(0)
                    continue
                last = str(resp).replace("\n", " ")
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"model server at {target} has no AVAILABLE version of {pending} after "
                    f"{timeout_s:.0f} s (last status: {last}); check the base path holds "
                    "<version>/saved_model.pb"
                )
            time.sleep(0.1)


def launch_model_server(
    base_dir: Optional[str] = None,
    model_name: Optional[str] = None,
    port: int = 0,
    model_config_file: Optional[str] = None,
    binary: Optional[str] = None,
    ready_timeout_s: float = 120.0,
    poll_interval_s: float = 1.0,
    extra_args: Sequence[str] = (),
    host: str = "127.0.0.1",
    auth_token: Optional[str] = None,
) -> ModelServerHandle:
    """Starts TF Serving if ``tensorflow_model_server`` is on PATH, else the stand-in.

    Give either ``base_dir`` and ``model_name`` or ``model_config_file``. Returns once every model
    has an AVAILABLE version, so callers see the same thing whichever server runs.

    Args:
        base_dir: model base path (``--model_base_path``).
        model_name: model name (``--model_name``).
        port: gRPC port on 127.0.0.1; 0 picks a free one.
        model_config_file: a ``model_config_list`` text proto (``--model_config_file``).
        binary: path of the TF Serving binary (default: ``tensorflow_model_server`` on PATH;
            ``""`` forces the stand-in).
        ready_timeout_s: how long to wait for the models to become available.
        poll_interval_s: ``--file_system_poll_wait_seconds``.
        extra_args: more flags for the real binary.
        host: interface to bind. The stand-in binds exactly it. TF Serving 2.16 has no bind
            flag (it listens on 0.0.0.0:port): for a loopback host it is also given
            ``--grpc_socket_path`` in a private folder and the handle's target is that UNIX
            socket; restrict its TCP port with a firewall/NetworkPolicy or use
            ``--ssl_config_file`` (mTLS) through ``extra_args``.
        auth_token: stand-in only: the shared token every RPC must carry.

    Returns:
        The handle.

    Raises:
        ValueError: if neither or both of (base_dir, model_name) and model_config_file are
            given, or a token is asked of the real binary (it has no token check).
        TimeoutError / RuntimeError: if the server does not come up.
    """
    if model_config_file:
        if base_dir or model_name:
            raise ValueError("give model_config_file or base_dir/model_name, not both")
        configs = load_model_config_file(model_config_file)
        model_flags = [f"--model_config_file={os.path.abspath(model_config_file)}"]
    else:
        if not base_dir or not model_name:
            raise ValueError(
                f"base_dir={base_dir!r} and model_name={model_name!r}: give both, or a "
                "model_config_file"
            )
        configs = [single_model_config(base_dir, model_name)]
        model_flags = [f"--model_name={model_name}",
                       f"--model_base_path={_abs_path(base_dir)}"]
    exe = shutil.which(MODEL_SERVER_BINARY) if binary is None else (binary or None)
    names = [mc.name for mc in configs]
    if exe is None:
        handle = serve_models(configs, port=port, host=host, poll_interval_s=poll_interval_s,
                              auth_token=auth_token)
        wait_until_available(handle.target, names, ready_timeout_s, auth_token=auth_token)
        return handle
    if auth_token:
        raise ValueError(f"{exe} has no token check; use --ssl_config_file (mTLS) through "
                         "extra_args, or the stand-in (binary='')")
    port = port or _free_port()
    socket_path = None
    if host in ("127.0.0.1", "localhost", "::1"):
        import tempfile

        socket_path = os.path.join(tempfile.mkdtemp(prefix="tfs-"), "grpc.sock")
        log.warning("%s listens on 0.0.0.0:%d whatever the host (no bind flag in TF Serving); "
                    "clients here use the UNIX socket %s", exe, port, socket_path)
    cmd = [exe, f"--port={port}", *model_flags,
           f"--file_system_poll_wait_seconds={max(1, int(round(poll_interval_s)))}",
           *([f"--grpc_socket_path={socket_path}"] if socket_path else []), *extra_args]
    log.info("starting %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def alive() -> Optional[str]:
        if proc.poll() is None:
            return None
        err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        return f"{exe} exited with code {proc.returncode}: {err}"

    def stop(grace_s: float) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max(grace_s, 5.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    handle = ModelServerHandle(port, MODEL_SERVER_BINARY, stop, socket_path=socket_path)
    try:
        wait_until_available(handle.target, names, ready_timeout_s, alive)
    except BaseException:
        handle.stop()
        raise
    return handle


def build_arg_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m serving.model_server`` (TF Serving's names, plus ``--host``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--model_name", default="")
    parser.add_argument("--model_base_path", default="")
    parser.add_argument("--model_config_file", default="")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (0.0.0.0: every interface, e.g. in a pod)")
    parser.add_argument("--grpc_socket_path", default="", help="also listen on this UNIX socket")
    parser.add_argument("--max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest gRPC message")
    parser.add_argument("--auth_token_file", default="",
                        help="require 'authorization: Bearer <token>' metadata "
                             "(else $LIMAML_MODEL_TOKEN; neither: no check)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the stand-in with TF Serving's flag names until SIGINT/SIGTERM."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.model_config_file:
        configs = load_model_config_file(args.model_config_file)
    elif args.model_base_path:
        configs = [single_model_config(args.model_base_path, args.model_name or "default")]
    else:
        parser.error("give --model_base_path (and --model_name) or --model_config_file")
    handle = serve_models(configs, port=args.port, host=args.host,
                          poll_interval_s=args.file_system_poll_wait_seconds,
                          max_message_bytes=args.max_message_bytes,
                          auth_token=read_token(args.auth_token_file),
                          grpc_socket_path=args.grpc_socket_path or None)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"serving {[c.name for c in configs]} on port {handle.port}", flush=True)
    done.wait()
    handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
