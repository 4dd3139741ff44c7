#!/bin/bash
# The main job: set up .venv (first time only), then run the whole pipeline on the shipped sample
# corpus with the local executor, on this machine's CPUs, and write the run's report
# (runs/demo/report/index.html). Extra arguments go to `lmhpc run` (e.g. --stages curate).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash env/setup_cpu.sh
.venv/bin/lmhpc run configs/demo.yaml --executor local "$@"
run_dir=$(.venv/bin/python -c 'import sys; from lmhpc.config import load_config; print(load_config(sys.argv[1], sys.argv[2:]).run_dir)' \
  configs/demo.yaml $(printf '%s\n' "$@" | grep '=' | grep -v '^--' || true))
.venv/bin/lmhpc report "$run_dir"
echo "[demo] report: $run_dir/report/index.html"
