#!/usr/bin/env bash
# The main job: set up, then run LiMAML end to end on the default data (ML-100K) into ./runs/main.
# Extra arguments go to `limaml run` (e.g. --data DIR --output DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/limaml run --output runs/main "$@"
