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
  (or ``--model_config_file=...``): the stand-in with TF Serving's flag names (binds 127.0.0.1
  unless ``--host`` says otherwise).

Package layout, one concern per module: ``errors`` (constants, ``ServingError``), ``config``
(model config files, version folders and policies), ``registry`` (servables, loading by policy),
``predict`` (input checks, the SavedModel call, typed outputs), ``guard`` (shared token, tensor
shape and size limits), ``services`` (gRPC servicers), ``server`` (the in-process stand-in),
``launch`` (real binary or stand-in), ``cli`` (``python -m serving.model_server``).
"""
from __future__ import annotations

from serving.model_server.cli import build_arg_parser, main
from serving.model_server.config import (
    aspired_versions,
    list_versions,
    load_model_config_file,
    single_model_config,
)
from serving.model_server.errors import (
    DEFAULT_SIGNATURE,
    MODEL_SERVER_BINARY,
    SIGNATURE_DEF_FIELD,
    ServingError,
)
from serving.model_server.guard import TokenAuthInterceptor, check_tensor_proto
from serving.model_server.launch import launch_model_server, wait_until_available
from serving.model_server.predict import run_predict, tensor_to_proto_field
from serving.model_server.registry import ModelRegistry, Servable, load_servable
from serving.model_server.server import ModelServerHandle, serve_models, start_model_server

__all__ = [
    "DEFAULT_SIGNATURE", "MODEL_SERVER_BINARY", "ModelRegistry", "ModelServerHandle",
    "SIGNATURE_DEF_FIELD", "Servable", "ServingError", "TokenAuthInterceptor", "aspired_versions",
    "build_arg_parser", "check_tensor_proto", "launch_model_server", "list_versions",
    "load_model_config_file", "load_servable", "main", "run_predict", "serve_models",
    "single_model_config", "start_model_server", "tensor_to_proto_field", "wait_until_available",
]
