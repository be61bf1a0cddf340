#!/usr/bin/env bash
# Create ./.venv and install clipfair with its test extras. Idempotent: re-running only
# reinstalls when pyproject.toml changed. torch is installed first, pinned, so that pip
# does not pull a multi-GB CUDA build on machines where the CPU wheel is local.
#
# `bash scripts/setup.sh openclip` instead creates ./.venv-openclip for the open_clip backend:
# open_clip needs torchvision, which does not import with the core's torch, so it gets its own
# environment with torch + torchvision pinned together (CLIPFAIR_OPENCLIP_TORCH_SPEC), then
# clipfair[test,open_clip] with those pins as constraints (pip never replaces that torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-core}" = "openclip" ]; then
  VENV=.venv-openclip
  TORCH_SPEC=${CLIPFAIR_OPENCLIP_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
  OPENCLIP_SPEC=${CLIPFAIR_OPENCLIP_SPEC:-open_clip_torch==3.3.0}
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  stamp=$VENV/.clipfair-installed
  want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC $OPENCLIP_SPEC"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    tr ' ' '\n' <<< "$TORCH_SPEC $OPENCLIP_SPEC" > "$VENV/constraints.txt"
    if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
      echo "installing $TORCH_SPEC into $VENV ..."
      # shellcheck disable=SC2086
      "$VENV/bin/python" -m pip install -q $TORCH_SPEC
    fi
    echo "installing clipfair[test,open_clip] ($OPENCLIP_SPEC) into $VENV ..."
    "$VENV/bin/python" -m pip install -q -c "$VENV/constraints.txt" -e ".[test,open_clip]"
    echo "$want" > "$stamp"
  fi
  exit 0
fi

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
# headless Chromium for tests/test_report_browser.py (the report measured in a real browser); optional:
# installed where missing and apt-get is usable as root, else that test is skipped
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing chromium (for the report's browser test) ..."
  (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
    apt-get install -y -q chromium >/dev/null 2>&1; }) || echo "chromium not installed: the browser test is skipped"
fi
