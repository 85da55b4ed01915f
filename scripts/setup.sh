#!/usr/bin/env bash
# Creates .venv/ (Python 3.11) and installs the pinned stack, once; later calls return at once.
# Re-installs when requirements.lock, pyproject.toml or this script change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
STAMP=.venv/.airbind-installed
WANT=$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "[setup] creating .venv and installing the pinned stack (about 4 minutes on a 2-core CPU)"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q -r requirements.lock 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
echo "$WANT" > "$STAMP"
echo "[setup] done: $(.venv/bin/python -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)')"
