#!/usr/bin/env bash
# The test suite: set up, then run every test. Exit code is pytest's; "no tests ran" fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
# System packages of the tests (headless Chromium renders the HTML report); a failure here
# is reported, and the browser test then fails with the reason.
./scripts/system_packages.sh || echo "[tests] warning: system packages missing (see above)" >&2
# Lint first (ruff, configured in pyproject.toml): a lint error fails the run before the tests.
.venv/bin/ruff check .
set +e
# Two workers (pytest-xdist; tests/conftest.py groups modules so that each expensive session
# fixture is built once); LIMAML_TEST_WORKERS=0 runs in one process.
.venv/bin/python -m pytest -n "${LIMAML_TEST_WORKERS:-2}" --dist loadgroup "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5); failing on purpose" >&2
  exit 5
fi
exit "$rc"
