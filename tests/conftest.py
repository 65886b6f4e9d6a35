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

# --- Parallel runs (pytest-xdist, `-n 2 --dist loadgroup`, as scripts/run_tests.sh runs) ------
# Every module runs on one worker (its module fixtures are built once), and every module that
# uses an expensive session fixture joins that fixture's group, so the fixture is built once
# in the whole run, not once per worker.
_SHARED_SESSION_FIXTURES = ("pipeline_run", "limaml_served")
_LONGEST_GROUPS_FIRST = ("tests/test_multi_block_pipeline.py", "pipeline_run", "tests/test_report.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # not an xdist worker: nothing to group
        return
    group_of_module = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        shared = next((f for f in _SHARED_SESSION_FIXTURES
                       if f in getattr(item, "fixturenames", ())), None)
        if shared is not None:
            group_of_module[module] = shared
        group_of_module.setdefault(module, module)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of_module[item.nodeid.split("::")[0]]))
    # The longest groups first, so that the two workers start on them and no long group is
    # left to run alone at the end (each of these builds a pipeline run or four TFMA runs).
    rank = {g: i for i, g in enumerate(_LONGEST_GROUPS_FIRST)}
    items.sort(key=lambda it: rank.get(group_of_module[it.nodeid.split("::")[0]], len(rank)))
