#!/usr/bin/env bash
# Create ./.venv and install clipfair with its test extras. Idempotent: re-running only
# reinstalls when pyproject.toml changed. torch is installed first, pinned, so that pip
# does not pull a multi-GB CUDA build on machines where the CPU wheel is local.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${CLIPFAIR_TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.clipfair-installed
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "installing $TORCH_SPEC ..."
    .venv/bin/python -m pip install -q "$TORCH_SPEC"
  fi
  echo "installing clipfair and its dependencies ..."
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
