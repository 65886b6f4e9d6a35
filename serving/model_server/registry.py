"""Loaded servables and the registry that loads/unloads versions by policy."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.config import aspired_versions, list_versions
from serving.model_server.errors import _SERVE_TAG, ServingError, _State
from serving.model_server.proto_call import ProtoFedSignature

log = logging.getLogger(__name__)


@dataclass
class Servable:
    """One loaded model version.

    Attributes:
        name: model name.
        version: version number.
        path: the SavedModel directory.
        signature_defs: signature key -> ``SignatureDef`` of the ``serve`` meta graph.
        functions: signature key -> callable concrete function.
        warmed_up: warm-up records replayed at load (:mod:`serving.model_server.warmup`).
    """

    name: str
    version: int
    path: str
    signature_defs: Dict[str, meta_graph_pb2.SignatureDef]
    functions: Dict[str, Callable]
    _module: object = field(default=None, repr=False)
    warmed_up: int = 0
    _proto_fed: Dict[str, Optional[ProtoFedSignature]] = field(default_factory=dict, repr=False)
    _proto_fed_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def proto_fed(self, key: str) -> Optional[ProtoFedSignature]:
        """Signature ``key`` called on serialized input protos (traced on first use), or None
        where its inputs are not keyword tensors."""
        fed = self._proto_fed.get(key, False)
        if fed is not False:
            return fed  # type: ignore[return-value]
        with self._proto_fed_lock:
            if key not in self._proto_fed:
                try:
                    self._proto_fed[key] = ProtoFedSignature(self.functions[key])
                except ValueError as exc:
                    log.info("signature %r of %s version %d: %s", key, self.name, self.version, exc)
                    self._proto_fed[key] = None
            return self._proto_fed[key]


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
    """Loads one SavedModel version for serving and replays its warm-up records (as TF
    Serving does before a version serves)."""
    from serving.model_server.warmup import replay_warmup  # it imports this module

    sig_defs = _read_signature_defs(path)
    module = tf.saved_model.load(path, tags=[_SERVE_TAG])
    functions = dict(module.signatures)
    servable = Servable(name, version, path, sig_defs, functions, module)
    servable.warmed_up = replay_warmup(servable)
    return servable


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
