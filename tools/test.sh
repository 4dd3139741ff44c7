#!/bin/bash
# The test suite: set up .venv with the test-only peers of requirements-test.txt (first time only),
# start the local single-node SLURM cluster (installs Debian's slurm and munge packages the first
# time), then run every test, the slow end-to-end ones included; tests against a peer fail here
# rather than skip when it is missing. Extra arguments go to pytest (e.g. -m "not slurm", -k config).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash env/setup_cpu.sh --test
bash tools/slurm_cluster.sh start
# Debian's chromium for the report's browser test (installed the first time)
if ! command -v chromium >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "tools/test.sh: install Debian's chromium (apt-get install chromium)" >&2; exit 1; }
  apt=(apt-get -o DPkg::Lock::Timeout=600 -o APT::Lock::Timeout=600 -qq)
  apt-cache policy chromium 2>/dev/null | grep -q 'Candidate: [0-9]' || "${apt[@]}" update
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends chromium fonts-dejavu-core
fi
eval "$(bash tools/slurm_cluster.sh env)"
export WANDB_MODE=offline LMHPC_REQUIRE_SLURM=1 LMHPC_REQUIRE_PEERS=1
exec .venv/bin/python -m pytest -n 2 --dist loadgroup -q -ra "$@"
