#!/usr/bin/env bash
# The test suite: set up, then run every test. Exit code is pytest's; "no tests ran" fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5); failing on purpose" >&2
  exit 5
fi
exit "$rc"
