"""Shared pytest fixtures. Add yours in a clearly labelled section; keep imports local."""
from __future__ import annotations

import pytest


# --- Bigtable emulator (embeddings/, serving/embedding_lookup.py) -----------------------------
@pytest.fixture(scope="session")
def bigtable_emulator():
    """One real ``cbtemulator`` for the whole session (stopped at the end).

    It does not touch ``BIGTABLE_EMULATOR_HOST``: build clients with ``bigtable_emulator.client()``
    and use a fresh table id per test for isolation.
    """
    from embeddings.emulator import BigtableEmulator

    emu = BigtableEmulator(set_env=False)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


# --- End-to-end pipeline run (tests/pipeline_fixtures.py) -------------------------------------
from tests.pipeline_fixtures import pipeline_run  # noqa: E402,F401  (session fixture, lazy)
