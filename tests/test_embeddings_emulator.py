"""Bigtable emulator helper (embeddings/emulator.py)."""
from __future__ import annotations

import os
import socket

import pytest

from embeddings import emulator
from embeddings.emulator import ENV_HOST, BigtableEmulator, EmulatorNotFoundError


def test_context_manager_sets_and_restores_env(monkeypatch):
    monkeypatch.setenv(ENV_HOST, "previous:1")
    with BigtableEmulator() as emu:
        assert os.environ[ENV_HOST] == emu.address == f"127.0.0.1:{emu.port}"
        with socket.create_connection(("127.0.0.1", emu.port), timeout=2):
            pass
        assert emu.running
    assert os.environ[ENV_HOST] == "previous:1"
    assert not emu.running
    monkeypatch.delenv(ENV_HOST)
    with BigtableEmulator():
        assert ENV_HOST in os.environ
    assert ENV_HOST not in os.environ


def test_missing_binary_says_how_to_install(monkeypatch):
    monkeypatch.delenv(emulator.ENV_BINARY, raising=False)
    monkeypatch.setattr(emulator.shutil, "which", lambda name: None)
    monkeypatch.setattr(emulator, "_KNOWN_SDK_ROOTS", ("/nonexistent-sdk",))
    with pytest.raises(EmulatorNotFoundError,
                       match=r"apt-get install google-cloud-cli-bigtable-emulator"):
        emulator.find_emulator_binary()
    monkeypatch.setenv(emulator.ENV_BINARY, "/nonexistent/cbtemulator")
    with pytest.raises(EmulatorNotFoundError, match=r"/nonexistent/cbtemulator"):
        BigtableEmulator().start()
