"""A stand-in model server process stops once the process that launched it is gone
(serving/parent_watch.py, ``--parent_pid``)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from serving.model_server.cli import main as model_server_main
from serving.parent_watch import parent_is_gone, watch_parent

try:
    from serving_fixtures import toy_model_base  # noqa: F401 - the fixture
except ImportError:  # pragma: no cover - run from the repository root
    from tests.serving_fixtures import toy_model_base  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_watch_calls_on_gone_once_when_the_parent_changes():
    parents = iter([7, 7, 7, 1, 1, 1, 1])
    calls = []
    done = threading.Event()

    def on_gone():
        calls.append(time.monotonic())
        done.set()

    thread = watch_parent(7, on_gone, interval_s=0.01, getppid=lambda: next(parents, 1))
    assert done.wait(5)
    thread.join(5)
    assert not thread.is_alive() and len(calls) == 1


def test_a_stopped_watch_never_fires_and_bad_arguments_are_refused():
    """Stopped before its first check (the parent reads as gone), the watch ends at once
    without calling ``on_gone``."""
    stop = threading.Event()
    calls = []
    thread = watch_parent(7, lambda: calls.append(1), interval_s=2.0, getppid=lambda: 1,
                          stop=stop)
    stop.set()
    thread.join(1.0)
    assert not thread.is_alive() and calls == []
    with pytest.raises(ValueError, match="parent_pid=0"):
        watch_parent(0, lambda: None)
    with pytest.raises(ValueError, match="interval_s=0"):
        watch_parent(7, lambda: None, interval_s=0)
    assert parent_is_gone(os.getppid() + 1) and not parent_is_gone(os.getppid())


def test_the_stand_in_does_not_start_for_a_parent_already_gone(capsys):
    assert model_server_main(["--parent_pid", str(os.getppid() + 1),
                              "--model_base_path", "/nonexistent", "--model_name", "m"]) == 1
    assert "already gone" in capsys.readouterr().err


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_the_stand_in_stops_when_its_launcher_is_killed(toy_model_base):
    """A launcher killed with SIGKILL (no stop()) leaves no model server behind."""
    launcher = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from serving.model_server import launch_model_server\n"
         "h = launch_model_server(sys.argv[1], 'm', binary='', stand_in_process=True)\n"
         "print(h.pid, flush=True)\n"
         "time.sleep(600)\n", toy_model_base],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT))
    child = -1
    try:
        child = int(launcher.stdout.readline())
        assert _state(child) not in ("gone", "Z")  # serving
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _state(child) not in ("gone", "Z"):
            time.sleep(0.1)
        assert _state(child) in ("gone", "Z")
    finally:
        launcher.kill()
        launcher.wait()
        if child > 0 and _state(child) not in ("gone", "Z"):
            os.kill(child, signal.SIGKILL)
