"""``launch_model_server``: the real ``tensorflow_model_server`` when on PATH, else the stand-in."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Mapping, Optional, Sequence

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from serving.grpc_io import serving_environ
from serving.model_server.config import _abs_path, load_model_config_file, single_model_config
from serving.model_server.errors import MODEL_SERVER_BINARY, STAND_IN_KIND, _State
from serving.model_server.guard import TOKEN_ENV
from serving.model_server.server import ModelServerHandle, serve_models

log = logging.getLogger(__name__)

# the folder holding the ``serving`` package: a stand-in process imports it from there
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stand_in_environ(base: Mapping[str, str], auth_token: Optional[str]) -> Dict[str, str]:
    """The environment of a stand-in process: ``base`` with this project first on
    ``PYTHONPATH``, gRPC's polling I/O unless ``base`` chose (:mod:`serving.grpc_io`), and the
    token (in the environment, not on the command line, where ``ps`` shows it) or none."""
    env = serving_environ(base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, base.get("PYTHONPATH", "")) if p)
    env.pop(TOKEN_ENV, None)
    if auth_token:
        env[TOKEN_ENV] = auth_token
    return env


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
    stand_in_process: bool = False,
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
        stand_in_process: run the stand-in as its own process (``python -m
            serving.model_server``, on a UNIX socket for a loopback host), as the real binary
            runs, instead of threads of this process. Its Predicts then no longer share this
            process's GIL with the caller (the ranker): on ML-100K with 100 candidates this
            took the ranker from 1.9x to 3.0x its one-client throughput at 8 clients.

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
    if exe is None and not stand_in_process:
        handle = serve_models(configs, port=port, host=host, poll_interval_s=poll_interval_s,
                              auth_token=auth_token)
        wait_until_available(handle.target, names, ready_timeout_s, auth_token=auth_token)
        return handle
    if exe is not None and auth_token:
        raise ValueError(f"{exe} has no token check; use --ssl_config_file (mTLS) through "
                         "extra_args, or the stand-in (binary='')")
    port = port or _free_port()
    socket_path = None
    loopback = host in ("127.0.0.1", "localhost", "::1")
    private = tempfile.mkdtemp(prefix="tfs-")  # the server's log (and socket); 0700
    if loopback:
        socket_path = os.path.join(private, "grpc.sock")
    env = None
    if exe is None:  # the stand-in as a process: TF Serving's flags, plus --host
        exe, kind = sys.executable, STAND_IN_KIND
        head = [exe, "-m", "serving.model_server", f"--host={host}",
                f"--parent_pid={os.getpid()}"]  # it stops if this process dies unstopped
        env = stand_in_environ(os.environ, auth_token)
    else:
        kind, head = MODEL_SERVER_BINARY, [exe]
        if loopback:
            log.warning("%s listens on 0.0.0.0:%d whatever the host (no bind flag in TF "
                        "Serving); clients here use the UNIX socket %s", exe, port, socket_path)
    cmd = [*head, f"--port={port}", *model_flags,
           f"--file_system_poll_wait_seconds={max(1, int(round(poll_interval_s)))}",
           *([f"--grpc_socket_path={socket_path}"] if socket_path else []), *extra_args]
    log.info("starting %s", " ".join(cmd))
    # its log goes to a file: a pipe nobody reads fills up and then blocks the server
    log_path = os.path.join(private, "server.log")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, env=env)

    def alive() -> Optional[str]:
        if proc.poll() is None:
            return None
        with open(log_path, "rb") as fh:
            err = fh.read().decode(errors="replace")[-2000:]
        return f"{exe} exited with code {proc.returncode}: {err}"

    def stop(grace_s: float) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max(grace_s, 5.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(private, ignore_errors=True)

    handle = ModelServerHandle(port, kind, stop, socket_path=socket_path)
    handle.pid = proc.pid
    try:
        wait_until_available(handle.target, names, ready_timeout_s, alive,
                             auth_token=auth_token)
    except BaseException:
        handle.stop()
        raise
    return handle
