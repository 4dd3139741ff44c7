#!/bin/bash
# The test suite: set up .venv with the test-only peers of requirements-test.txt (first time only),
# start the local single-node SLURM cluster (installs Debian's slurm and munge packages the first
# time), then run every test, the slow end-to-end ones included; tests against a peer fail here
# rather than skip when it is missing. Extra arguments go to pytest (e.g. -m "not slurm", -k config).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash env/setup_cpu.sh --test
bash tools/slurm_cluster.sh start
eval "$(bash tools/slurm_cluster.sh env)"
export WANDB_MODE=offline LMHPC_REQUIRE_SLURM=1 LMHPC_REQUIRE_PEERS=1
exec .venv/bin/python -m pytest -n 2 --dist loadgroup -q -ra "$@"
