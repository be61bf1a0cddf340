#!/usr/bin/env bash
# Set everything up and run the whole test suite: the core suite in ./.venv, then the open_clip
# backend's tests (marked `open_clip`) in ./.venv-openclip, which has the torch + torchvision
# open_clip needs. CLIPFAIR_SKIP_OPENCLIP=1 runs the core suite only. Arguments go to the core run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rc=0
.venv/bin/python -m pytest -q "$@" || rc=$?
if [ "${CLIPFAIR_SKIP_OPENCLIP:-0}" != "1" ]; then
  t0=$(date +%s)
  bash scripts/setup.sh openclip
  echo "open_clip environment ready in $(( $(date +%s) - t0 )) s"
  .venv-openclip/bin/python -m pytest -q -m open_clip tests || rc=$?
fi
exit $rc
