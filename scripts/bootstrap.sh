#!/usr/bin/env bash
# Creates .venv with Python 3.10 and installs LiMAML with the pinned dependency set.
# Idempotent: a second call only re-installs when setup.py or the lock file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for cand in "${LIMAML_PYTHON:-}" python3.10 \
      "$(command -v pyenv >/dev/null 2>&1 && echo "$(pyenv root)/versions/3.10.13/bin/python3.10")" \
      "$HOME/.pyenv/versions/3.10.13/bin/python3.10" /usr/bin/python3.10 /usr/local/bin/python3.10; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ]; then
  if ! PY=$(find_python); then
    cat >&2 <<'MSG'
error: no Python 3.10 interpreter found. TFX 1.16 needs Python 3.9-3.10 (it does not run on 3.11).
Install one, e.g. `pyenv install 3.10.13`, or `apt-get install python3.10 python3.10-venv`,
or point LIMAML_PYTHON at a python3.10 binary, then run this command again.
MSG
    exit 1
  fi
  echo "[bootstrap] creating .venv with $PY"
  "$PY" -m venv .venv
fi

stamp=.venv/.limaml-installed
want=$(cat setup.py requirements/lock.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing LiMAML and its pinned dependencies (first time: ~2-4 minutes)"
  start=$(date +%s)
  # grep drops this machine's notes about absent local mirrors; pipefail keeps pip's exit status
  .venv/bin/python -m pip install --quiet --upgrade "pip<25" wheel 2>&1 | { grep -v "is ignored: it is neither" || true; }
  .venv/bin/python -m pip install --quiet -c requirements/lock.txt -e ".[test]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  echo "$want" > "$stamp"
  echo "[bootstrap] installed in $(( $(date +%s) - start )) s"
fi
