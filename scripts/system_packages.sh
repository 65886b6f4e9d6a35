#!/usr/bin/env bash
# Installs the system packages LiMAML's tests need beyond Python: a headless browser (chromium)
# that renders the evaluation report in tests/test_report.py, and a font for it.
# Idempotent: does nothing when chromium is already on PATH.
set -euo pipefail

PKGS=(chromium fonts-dejavu-core)

if command -v chromium >/dev/null 2>&1; then
  echo "[system_packages] chromium present: $(command -v chromium)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  cat >&2 <<MSG
[system_packages] chromium is missing and this is not root, so nothing was installed.
Install it as root (Debian/Ubuntu):
  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${PKGS[*]}
or put any chromium/chrome binary on PATH under the name 'chromium'.
Tests that need it (tests/test_report.py::test_html_renders_in_browser) are skipped until then.
MSG
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "[system_packages] chromium is missing and apt-get is not available; install '${PKGS[*]}' with this system's package manager." >&2
  exit 1
fi

echo "[system_packages] installing ${PKGS[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${PKGS[@]}"
command -v chromium >/dev/null 2>&1 || { echo "[system_packages] chromium still not on PATH after install" >&2; exit 1; }
echo "[system_packages] chromium installed: $(command -v chromium)"
