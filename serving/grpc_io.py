"""gRPC's I/O engine in the serving processes: the polling engine, not the EventEngine threads.

grpcio 1.85's default I/O runs on EventEngine threads: every read and write of a call hops
between them and the thread that waits for the answer, and each hop is a thread wake-up. On a
small, low-latency call that is most of the call: an echo of the ranker's Predict size (9.4 KB
in, 600 B out) between two Python processes here takes 0.64-0.70 ms, 0.39-0.48 ms with the
EventEngine experiments off on both sides (the calling thread polls the socket itself, as gRPC
did before them); a raw TCP round trip of the same bytes takes 0.09 ms. In the ranker service
with the stand-in, a 100-candidate request's Predict round trip drops by 0.13-0.2 ms
(``benchmarks/results/README.md``).

gRPC reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is imported, so it must be in the
environment before that: :func:`serving_environ` for a process we start (the stand-in), and
:func:`prefer_polling_io` at the top of a command that serves (``limaml serve``, ``score``,
``bench serve``). A ``GRPC_EXPERIMENTS`` the user set, even empty, is kept (set it to ``""``
for gRPC's defaults). This module imports nothing of gRPC.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Mapping, MutableMapping, Optional

GRPC_EXPERIMENTS_ENV = "GRPC_EXPERIMENTS"
POLLING_IO_EXPERIMENTS = ",".join((
    "-event_engine_client",
    "-event_engine_listener",
    "-event_engine_for_all_other_endpoints",
    "-event_engine_callback_cq",
))
"""The experiments turned off: EventEngine for client and server sockets, for every other
endpoint, and for callback completion queues."""


def serving_environ(base: Mapping[str, str]) -> Dict[str, str]:
    """A copy of ``base`` for a serving process: ``GRPC_EXPERIMENTS`` added unless ``base`` has it."""
    env = dict(base)
    env.setdefault(GRPC_EXPERIMENTS_ENV, POLLING_IO_EXPERIMENTS)
    return env


def prefer_polling_io(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Sets ``GRPC_EXPERIMENTS`` in this process (unless set) while gRPC is not imported yet.

    Args:
        environ: the environment to change (default ``os.environ``).

    Returns:
        Whether gRPC will use the setting: False once ``grpc`` is imported (gRPC read the
        environment then; nothing is changed) or when the user set ``GRPC_EXPERIMENTS``.
    """
    environ = os.environ if environ is None else environ
    if "grpc" in sys.modules or GRPC_EXPERIMENTS_ENV in environ:
        return False
    environ[GRPC_EXPERIMENTS_ENV] = POLLING_IO_EXPERIMENTS
    return True


__all__ = ["GRPC_EXPERIMENTS_ENV", "POLLING_IO_EXPERIMENTS", "prefer_polling_io",
           "serving_environ"]
