#!/bin/bash
# The main job: set up .venv (first time only), then run the whole pipeline on the shipped sample
# corpus with the local executor, on this machine's CPUs. Extra arguments go to `lmhpc run`
# (e.g. run.name=demo2, --stages curate).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash env/setup_cpu.sh
exec .venv/bin/lmhpc run configs/demo.yaml --executor local "$@"
