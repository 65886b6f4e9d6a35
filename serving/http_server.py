"""Runs an ASGI app on uvicorn with a real accept queue, keep-alive and request deadlines.

``serve_asgi(app, host, port)`` binds the socket itself (so ``port=0`` works and the listen
backlog is ours: :data:`DEFAULT_BACKLOG`), then runs a ``uvicorn.Server`` on a background thread
(its own asyncio loop). What it adds to uvicorn's defaults:

* **Header deadline**: a connection that has not sent a complete request head
  ``header_timeout_s`` after it opened, or after the first byte of its next keep-alive request,
  is closed (uvicorn alone keeps a slow-header client forever: any byte cancels its keep-alive
  timer). The body has its own deadline in the app (``serving.ranker_service``).
* **Bounded sizes**: request heads larger than ``max_header_bytes`` are answered 400.
* **Bounded connections**: beyond ``max_connections`` open connections uvicorn answers 503.
* **Keep-alive**: idle keep-alive connections are closed after ``keep_alive_s``.

HTTP parsing: httptools (llhttp, C) on a uvloop event loop, uvicorn's production setup, when
both are installed (they are pinned in ``setup.py``); otherwise h11 (pure Python) on asyncio.
``http="h11"`` forces the pure-Python pair. Both get the same deadlines and limits.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any, Optional

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

DEFAULT_BACKLOG = 2048
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_S = 5
DEFAULT_MAX_HEADER_BYTES = 16 << 10
DEFAULT_MAX_CONNECTIONS = 4096


class _HeadDeadline:
    """Mixin for a uvicorn HTTP protocol: closes connections that do not finish a request head
    in time, and answers 400 to a head larger than ``max_header_bytes``."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_header_bytes: Optional[int] = None  # None: unbounded

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_deadline: Optional[asyncio.TimerHandle] = None
        self._head_bytes = 0
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Head and body go out in two writes: without TCP_NODELAY, Nagle plus the client's
            # delayed ACK add ~40 ms to every keep-alive answer.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_deadline()

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete  # type: ignore[attr-defined]

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(  # type: ignore[attr-defined]
                self.header_timeout_s, self._head_timeout)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timeout(self) -> None:
        self._head_deadline = None
        if self._idle() and not self.transport.is_closing():  # type: ignore[attr-defined]
            log.info("closing a connection from %s: no complete request head within %.1f s",
                     self.client, self.header_timeout_s)  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._idle():
            self._arm_head_deadline()  # first bytes of a request: its head must follow in time
            end = data.find(b"\r\n\r\n")  # the head's end (a body may follow in the same chunk)
            head = self._head_bytes + (len(data) if end < 0 else end + 4)
            if self.max_header_bytes is not None and head > self.max_header_bytes:
                self._disarm_head_deadline()
                self.send_400_response("Request head too large.")  # type: ignore[attr-defined]
                return
            self._head_bytes = 0 if end >= 0 else head
        super().data_received(data)  # type: ignore[misc]
        if not self._idle():
            self._disarm_head_deadline()  # head complete: the app's body deadline takes over
            self._head_bytes = 0  # (also when its end was split across two reads)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)  # type: ignore[misc]


class _DeadlineH11Protocol(_HeadDeadline, H11Protocol):
    """h11 (pure Python) with the head deadline and :attr:`max_header_bytes` (h11's own bound,
    ``h11_max_incomplete_event_size``, only applies to a head that arrives in pieces)."""


def _fast_http() -> Optional[type]:
    """httptools' protocol with the head deadline and size bound, or None without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class _DeadlineHttpToolsProtocol(_HeadDeadline, HttpToolsProtocol):
        """httptools (llhttp, C) with the head deadline and :attr:`max_header_bytes`."""

    return _DeadlineHttpToolsProtocol


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


class AsgiServerHandle:
    """A running uvicorn server on a background thread.

    Attributes:
        host: bound interface.
        port: bound port.
        stack: the HTTP parser and event loop, ``"httptools/uvloop"`` or ``"h11/asyncio"``.
    """

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket
                 ) -> None:
        self._server = server
        self._thread = thread
        self._sock = sock
        self.host, self.port = sock.getsockname()[:2]
        self.stack = "h11/asyncio"
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.port}"

    def stop(self, grace_s: float = 5.0) -> None:
        """Stops accepting, lets running requests finish (up to ``grace_s``); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        self._thread.join(timeout=grace_s + 1.0)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=2.0)
        try:
            self._sock.close()
        except OSError:
            pass


def serve_asgi(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    backlog: int = DEFAULT_BACKLOG,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    keep_alive_s: int = DEFAULT_KEEP_ALIVE_S,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    start_timeout_s: float = 10.0,
    http: str = "auto",
    lifespan: str = "off",
) -> AsgiServerHandle:
    """Serves ``app`` (ASGI 3) on a background thread; returns once it accepts connections.

    Args:
        app: the ASGI application.
        host: interface to bind (``127.0.0.1``: this machine only).
        port: port; 0 picks a free one.
        backlog: listen queue of not yet accepted connections.
        header_timeout_s: most seconds for a request head (see module doc).
        keep_alive_s: idle seconds before a keep-alive connection is closed.
        max_header_bytes: largest request head.
        max_connections: open connections (and running requests) before answering 503.
        start_timeout_s: how long to wait for the server to start.
        http: ``"auto"`` (httptools on uvloop when installed, else h11 on asyncio) or ``"h11"``.
        lifespan: ``"on"``: the app gets ASGI's lifespan startup (before the first connection
            is accepted) and shutdown events; ``"off"``: it does not.

    Returns:
        The handle (``host``, ``port``, ``url``, ``stop()``).

    Raises:
        OSError: the address cannot be bound.
        RuntimeError: the server did not start in time.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    fast = _fast_http() if http == "auto" else None
    if http not in ("auto", "h11"):
        raise ValueError(f"http {http!r} is unknown; use 'auto' (httptools when installed) or 'h11'")
    base = fast or _DeadlineH11Protocol
    protocol = type(f"Deadline{base.__name__}", (base,), {
        "header_timeout_s": float(header_timeout_s),
        "max_header_bytes": int(max_header_bytes)})
    loop = "uvloop" if fast is not None and _has_uvloop() else "asyncio"
    config = uvicorn.Config(
        app, http=protocol, loop=loop, lifespan=lifespan, log_config=None, access_log=False,
        backlog=backlog, timeout_keep_alive=keep_alive_s, limit_concurrency=max_connections,
        h11_max_incomplete_event_size=max_header_bytes, server_header=False, date_header=False,
        timeout_graceful_shutdown=5,
        # the apps never read the client's address or scheme: no X-Forwarded-* rewriting layer
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"asgi-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the HTTP server on {host}:{sock.getsockname()[1]} did not start")
        time.sleep(0.01)
    handle = AsgiServerHandle(server, thread, sock)
    handle.stack = f"{'httptools' if fast else 'h11'}/{loop}"
    return handle


__all__ = ["AsgiServerHandle", "DEFAULT_BACKLOG", "serve_asgi"]
