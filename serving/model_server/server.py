"""The in-process stand-in server: ``serve_models``, ``start_model_server``, the handle."""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Callable, Optional, Sequence

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.config import single_model_config
from serving.model_server.errors import STAND_IN_KIND
from serving.model_server.guard import DEFAULT_MAX_MESSAGE_BYTES, TokenAuthInterceptor
from serving.model_server.registry import ModelRegistry
from serving.model_server.services import _ModelService, _PredictionService

log = logging.getLogger(__name__)


class ModelServerHandle:
    """A running model server (stand-in or real binary): where it listens and how to stop it.

    Attributes:
        port: the gRPC port on 127.0.0.1.
        kind: ``"stand-in"`` or ``"tensorflow_model_server"``.
        pid: the server's process id when it runs as its own process, else None.
    """

    def __init__(self, port: int, kind: str, stop_fn: Callable[[float], None],
                 host: str = "127.0.0.1", socket_path: Optional[str] = None) -> None:
        self.port = port
        self.kind = kind
        self.host = host
        self.socket_path = socket_path
        self._stop_fn = stop_fn
        self._stopped = False
        self.pid: Optional[int] = None

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
    return ModelServerHandle(bound, STAND_IN_KIND, stop, host=host)


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
