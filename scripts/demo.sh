#!/usr/bin/env bash
# Set everything up and run the bundled offline demo (toy model, synthetic faces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CLIPFAIR_CACHE=${CLIPFAIR_CACHE:-$PWD/results/.cache}
# overwrite=true: the demo folder is replaced on every run (a user run refuses a used folder)
.venv/bin/clipfair run hydra.run.dir=results/demo overwrite=true probe.enabled=true "$@"
echo
echo "Demo results: results/demo/report.html (one page: tables and plots), results/demo/summary.md, results/demo/metrics.csv"
