"""Start and stop the real Cloud Bigtable emulator (``cbtemulator``) for tests and local serving.

The emulator keeps all state in memory and speaks the real Bigtable gRPC API; the
``google-cloud-bigtable`` client talks to it when ``BIGTABLE_EMULATOR_HOST`` is set *before*
the client is constructed.

Example::

    with BigtableEmulator() as emu:          # picks a free port, waits until it accepts
        client = emu.client(project="p")     # or any client built inside the block
        ...
    # process stopped, BIGTABLE_EMULATOR_HOST restored to its previous value
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Optional

ENV_HOST = "BIGTABLE_EMULATOR_HOST"
ENV_BINARY = "LIMAML_CBTEMULATOR"  # optional override: full path of the cbtemulator binary

_INSTALL_HINT = (
    "Install it with `apt-get install google-cloud-cli-bigtable-emulator` (Debian/Ubuntu) or "
    "`gcloud components install bigtable`, or point ${} at the binary."
).format(ENV_BINARY)

_KNOWN_SDK_ROOTS = (
    "/usr/lib/google-cloud-sdk",
    "/usr/share/google-cloud-sdk",
    "/opt/google-cloud-sdk",
    os.path.expanduser("~/google-cloud-sdk"),
)
_REL_PATH = Path("platform") / "bigtable-emulator" / "cbtemulator"


class EmulatorNotFoundError(FileNotFoundError):
    """The ``cbtemulator`` binary is not installed (the message says how to install it)."""


def _sdk_root_from_gcloud() -> Optional[str]:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    try:
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    root = out.stdout.strip()
    return root or None


def find_emulator_binary() -> str:
    """Locates ``cbtemulator``.

    Search order: ``$LIMAML_CBTEMULATOR``; ``cbtemulator`` on ``PATH``; the usual Cloud SDK roots;
    the SDK root reported by ``gcloud info --format='value(installation.sdk_root)'``.

    Returns:
        Absolute path of an executable ``cbtemulator``.

    Raises:
        EmulatorNotFoundError: nothing found; the message lists where it looked and how to install.
    """
    looked: List[str] = []
    override = os.environ.get(ENV_BINARY)
    if override:
        if os.access(override, os.X_OK):
            return override
        raise EmulatorNotFoundError(
            f"${ENV_BINARY}={override!r} is not an executable file. {_INSTALL_HINT}")
    on_path = shutil.which("cbtemulator")
    if on_path:
        return on_path
    looked.append("PATH")
    candidates = [Path(r) / _REL_PATH for r in _KNOWN_SDK_ROOTS]
    for cand in candidates:
        looked.append(str(cand))
        if os.access(cand, os.X_OK):
            return str(cand)
    root = _sdk_root_from_gcloud()
    if root:
        cand = Path(root) / _REL_PATH
        looked.append(str(cand))
        if os.access(cand, os.X_OK):
            return str(cand)
    raise EmulatorNotFoundError(
        f"Bigtable emulator binary `cbtemulator` not found (looked in: {', '.join(looked)}). "
        + _INSTALL_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """Polls until ``host:port`` accepts TCP connections; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.01)
    return False


class BigtableEmulator:
    """A ``cbtemulator`` subprocess on a free local port.

    Used as a context manager it starts the process, waits until it accepts connections, sets
    ``BIGTABLE_EMULATOR_HOST`` for clients created inside the block, and on exit stops the
    process and restores the previous value of the variable (or unsets it).

    Args:
        host: interface to bind.
        port: port to use; ``None`` picks a free one.
        startup_timeout_s: how long to wait for the port to accept connections.
        binary: path of ``cbtemulator``; ``None`` searches (see :func:`find_emulator_binary`).
        set_env: whether entering the context sets ``BIGTABLE_EMULATOR_HOST``.
    """

    def __init__(self, host: str = "127.0.0.1", port: Optional[int] = None,
                 startup_timeout_s: float = 20.0, binary: Optional[str] = None,
                 set_env: bool = True) -> None:
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.binary = binary
        self.set_env = set_env
        self._proc: Optional[subprocess.Popen] = None
        self._saved_env: Optional[str] = None
        self._env_set = False

    @property
    def address(self) -> str:
        """``host:port`` (the value for ``BIGTABLE_EMULATOR_HOST``)."""
        if self.port is None:
            raise RuntimeError("emulator not started: call start() or use it as a context manager")
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "BigtableEmulator":
        """Starts the process and waits until it accepts connections.

        Raises:
            EmulatorNotFoundError: binary missing.
            RuntimeError: the process exited or did not listen within ``startup_timeout_s``.
        """
        if self.running:
            return self
        binary = self.binary or find_emulator_binary()
        for _attempt in range(3):  # a port picked by free_port() may be taken in between
            port = self.port if self.port is not None else free_port(self.host)
            proc = subprocess.Popen(
                [binary, "-host", self.host, "-port", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + self.startup_timeout_s
            while time.monotonic() < deadline and proc.poll() is None:
                if wait_for_port(self.host, port, 0.05):
                    break
            if proc.poll() is None and wait_for_port(self.host, port, 0.01):
                self._proc, self.port = proc, port
                atexit.register(self.stop)  # no orphan emulators if the caller forgets
                return self
            err = b""
            if proc.poll() is None:
                proc.kill()
            try:
                _, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            if self.port is not None:
                break
        raise RuntimeError(
            f"cbtemulator ({binary}) did not accept connections on {self.host}:{port} within "
            f"{self.startup_timeout_s}s; stderr: {(err or b'').decode(errors='replace')[-2000:]}")

    def stop(self) -> None:
        """Stops the process (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> "BigtableEmulator":
        self.start()
        if self.set_env:
            self._saved_env = os.environ.get(ENV_HOST)
            os.environ[ENV_HOST] = self.address
            self._env_set = True
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self._env_set:
                if self._saved_env is None:
                    os.environ.pop(ENV_HOST, None)
                else:
                    os.environ[ENV_HOST] = self._saved_env
                self._env_set = False

    def client(self, project: str = "limaml-local", admin: bool = True):
        """A ``google.cloud.bigtable.Client`` bound to this emulator (whatever the env says)."""
        return emulator_client(self.address, project, admin)


def emulator_client(address: str, project: str = "limaml-local", admin: bool = True):
    """A ``google.cloud.bigtable.Client`` bound to the emulator at ``address`` (env restored after)."""
    from google.cloud import bigtable  # local import: optional dependency at import time

    saved = os.environ.get(ENV_HOST)
    os.environ[ENV_HOST] = address
    try:
        return bigtable.Client(project=project, admin=admin)
    finally:
        if saved is None:
            os.environ.pop(ENV_HOST, None)
        else:
            os.environ[ENV_HOST] = saved


def emulator_session() -> Iterator[BigtableEmulator]:
    """Generator form for fixtures: ``yield from emulator_session()``."""
    with BigtableEmulator() as emu:
        yield emu
