#!/usr/bin/env bash
# Installs what tests/test_viz.py's real-browser test needs: Debian's chromium (apt) and Playwright for Python
# (pip, into the active venv or .venv). Playwright's own browser download (`playwright install`) is never used:
# the test launches /usr/bin/chromium through executable_path.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v chromium >/dev/null 2>&1; then
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi
PY="${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
"$PY" -m pip install -q "playwright>=1.40" "plotly>=5"
echo "chromium: $(command -v chromium); playwright: $("$PY" -c 'import playwright, importlib.metadata as m; print(m.version("playwright"))')"
