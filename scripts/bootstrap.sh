#!/usr/bin/env bash
# Create the project's virtual environment if it is missing and install attnlab into it.
#
# torch: if the Python that creates the venv can already import torch (e.g. your own CUDA build), the venv
# sees it (--system-site-packages) and keeps it. Only when no torch is importable do we install
# torch==2.13.0, which on a CPU machine is the small CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c "import torch" 2>/dev/null; then
        echo "bootstrap: reusing the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "bootstrap: no torch importable; installing torch==2.13.0"
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
touch "$VENV/.attnlab-installed"
echo "bootstrap: ready ($("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)'))"
