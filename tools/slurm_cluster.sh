#!/usr/bin/env bash
# A real single-node SLURM cluster (slurmctld + slurmd + slurmdbd/MariaDB for sacct), for tests and
# local runs. Everything lives under one base folder; nothing is written to /etc.
#
#   tools/slurm_cluster.sh start    install what is missing, start every daemon, wait for an idle node
#   tools/slurm_cluster.sh stop     cancel jobs, stop every daemon (TERM, wait, KILL)
#   tools/slurm_cluster.sh status   say whether it runs, then sinfo (exit 1 when it does not run)
#   tools/slurm_cluster.sh env      print the export line clients need:  eval "$(tools/slurm_cluster.sh env)"
#
# Environment: LMHPC_SLURM_BASE (default /tmp/lmhpc-slurm), LMHPC_SLURM_TIMEOUT (seconds each wait may
# take, default 60). Needs root (it runs slurmd and the daemons it manages as root / munge).
set -euo pipefail

BASE=${LMHPC_SLURM_BASE:-/tmp/lmhpc-slurm}
case "$BASE" in /*) ;; *) BASE="$PWD/$BASE" ;; esac
BASE=${BASE%/}
TIMEOUT=${LMHPC_SLURM_TIMEOUT:-60}

ETC=$BASE/etc
RUN=$BASE/run
LOG=$BASE/log
CONF=$ETC/slurm.conf
DBD_CONF=$ETC/slurmdbd.conf
MUNGE_DIR=$BASE/munge
MUNGE_SOCK=$MUNGE_DIR/run/munge.socket.2
MUNGE_KEY=$MUNGE_DIR/etc/munge.key
MUNGE_PID=$MUNGE_DIR/run/munged.pid
DB_DIR=$BASE/db
DB_DATA=$DB_DIR/data
DB_SOCK=$DB_DIR/mariadbd.sock
DB_PID=$DB_DIR/mariadbd.pid
DB_PASS_FILE=$ETC/db.pass
SLURMCTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid
SLURMDBD_PID=$RUN/slurmdbd.pid

CTLD_PORT=6817
SLURMD_PORT=6818
DBD_PORT=6819
DB_PORT=3306

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
# One executable per package, to tell whether it is installed.
NEEDED_BINS=(slurmctld slurmd sinfo munged slurmdbd mariadbd mariadb-install-db)

export SLURM_CONF=$CONF

log() { printf '[slurm_cluster] %s\n' "$*" >&2; }
die() {
  printf '[slurm_cluster] ERROR: %s\n' "$*" >&2
  exit 1
}

# Last lines of a log file, to make a failure readable without opening it.
tail_log() {
  local f=$1
  [ -s "$f" ] || return 0
  printf '  --- last lines of %s ---\n' "$f" >&2
  tail -n 15 "$f" | sed 's/^/  | /' >&2
}

fail_with_log() {
  local msg=$1
  shift
  printf '[slurm_cluster] ERROR: %s\n' "$msg" >&2
  local f
  for f in "$@"; do tail_log "$f"; done
  printf '[slurm_cluster] logs: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------------
# Process helpers. PID 1 may not reap orphans, so a dead daemon can linger as a zombie: "alive" means
# the process exists, is not a zombie and is the program we expect (guards against pid reuse).
# ---------------------------------------------------------------------------------------------------
pid_from_file() {
  local f=$1 pid
  [ -r "$f" ] || return 1
  read -r pid <"$f" 2>/dev/null || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  printf '%s' "$pid"
}

pid_alive() { # pid_alive PID [COMM]
  local pid=$1 comm=${2:-} stat state
  [ -r "/proc/$pid/stat" ] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  # Field 3 follows the ")" that closes the command name.
  state=${stat##*) }
  state=${state%% *}
  [ "$state" != Z ] && [ "$state" != X ] || return 1
  if [ -n "$comm" ]; then
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
  fi
}

daemon_alive() { # daemon_alive PIDFILE COMM
  local pid
  pid=$(pid_from_file "$1") || return 1
  pid_alive "$pid" "$2"
}

# stop_daemon NAME PIDFILE COMM: TERM, wait up to 15 s, then KILL.
stop_daemon() {
  local name=$1 pidfile=$2 comm=$3 pid i
  if ! pid=$(pid_from_file "$pidfile") || ! pid_alive "$pid" "$comm"; then
    rm -f "$pidfile"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    pid_alive "$pid" "$comm" || break
    sleep 0.1
  done
  if pid_alive "$pid" "$comm"; then
    log "$name did not stop after TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      pid_alive "$pid" "$comm" || break
      sleep 0.1
    done
  fi
  pid_alive "$pid" "$comm" && die "could not stop $name (pid $pid)"
  rm -f "$pidfile"
}

# wait_until SECONDS COMMAND...: poll every 0.2 s until the command succeeds.
wait_until() {
  local limit=$1
  shift
  local deadline=$((SECONDS + limit))
  while ! "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Refuse to start a daemon when its port is taken by something we do not manage (another cluster).
check_port_free() {
  local port=$1 what=$2
  if port_open "$port"; then
    die "port $port (for $what) is already in use by another process; stop it (another cluster under a different LMHPC_SLURM_BASE?) and retry"
  fi
}

# Before starting anything: each port must be free unless our own daemon for it is running.
preflight_ports() {
  daemon_alive "$DB_PID" mariadbd || check_port_free "$DB_PORT" mariadbd
  daemon_alive "$SLURMDBD_PID" slurmdbd || check_port_free "$DBD_PORT" slurmdbd
  daemon_alive "$SLURMCTLD_PID" slurmctld || check_port_free "$CTLD_PORT" slurmctld
  daemon_alive "$SLURMD_PID" slurmd || check_port_free "$SLURMD_PORT" slurmd
}

# Start a command detached in its own session, with no tie to the caller's terminal or pipes.
# Sets SPAWNED_PID (setsid does not fork here: a background job of a script is no group leader).
SPAWNED_PID=
spawn() { # spawn LOGFILE COMMAND...
  local logfile=$1
  shift
  setsid "$@" </dev/null >>"$logfile" 2>&1 9>&- &
  SPAWNED_PID=$!
}

# wait_started PID SECONDS CHECK...: poll CHECK until it succeeds; return 2 at once if the process
# PID (just spawned, so no name check: it may still be "setsid" before its exec) has exited, 1 on
# timeout.
wait_started() {
  local pid=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  while ! "$@" >/dev/null 2>&1; do
    pid_alive "$pid" || { "$@" >/dev/null 2>&1 && return 0; return 2; }
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# started_or_fail NAME WHAT RC LOGS...: turn wait_started's status into a clear error, ending the
# process that did not come up so that it is not left behind.
started_or_fail() {
  local name=$1 what=$2 rc=$3
  shift 3
  [ "$rc" = 0 ] && return 0
  pid_alive "$SPAWNED_PID" && kill -TERM "$SPAWNED_PID" 2>/dev/null
  if [ "$rc" = 2 ]; then
    fail_with_log "$name exited while starting" "$@"
  fi
  fail_with_log "$name did not $what within ${TIMEOUT}s" "$@"
}

# Serialise start/stop of one base folder (fd 9; daemons are started with it closed).
take_lock() {
  mkdir -p "$BASE"
  exec 9>"$BASE/.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -w "$((TIMEOUT * 5))" 9 || die "another start/stop of $BASE is still running (lock $BASE/.lock)"
  fi
}

require_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and runs slurmd); try: sudo $0 $*"
}

# ---------------------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------------------
missing_bins() {
  local b out=()
  for b in "${NEEDED_BINS[@]}"; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || [ -x "/usr/bin/$b" ] || out+=("$b")
  done
  printf '%s' "${out[*]}"
}

install_packages() {
  local missing
  missing=$(missing_bins)
  [ -z "$missing" ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing $missing and no apt-get to install: ${PACKAGES[*]}"
  log "installing ${PACKAGES[*]} (missing: $missing)"
  export DEBIAN_FRONTEND=noninteractive
  # Packages must not start their services: we start our own instances under $BASE.
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local apt_log=$LOG/apt.log rc=0
  # Wait for another apt/dpkg run to finish instead of failing on its lock.
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -o APT::Lock::Timeout=600)
  # Refresh the package lists only when they do not know the packages, or when installing fails.
  if apt-cache policy slurmctld 2>/dev/null | grep -q 'Candidate: (none)' ||
    [ -z "$(apt-cache policy slurmctld 2>/dev/null)" ]; then
    log "apt-get update (package lists do not know slurmctld)"
    "${apt[@]}" update >>"$apt_log" 2>&1 || rc=$?
  fi
  if ! "${apt[@]}" install -y --no-install-recommends "${PACKAGES[@]}" >>"$apt_log" 2>&1; then
    log "apt-get install failed; running apt-get update and retrying"
    "${apt[@]}" update >>"$apt_log" 2>&1 || true
    "${apt[@]}" install -y --no-install-recommends "${PACKAGES[@]}" >>"$apt_log" 2>&1 || rc=$?
  fi
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  missing=$(missing_bins)
  [ -z "$missing" ] || fail_with_log "package install did not provide: $missing (apt exit $rc)" "$apt_log"
}

# ---------------------------------------------------------------------------------------------------
# munge
# ---------------------------------------------------------------------------------------------------
munge_ok() { munge -n -S "$MUNGE_SOCK" 2>/dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; }

start_munge() {
  id munge >/dev/null 2>&1 || die "user 'munge' does not exist (is the munge package installed?)"
  mkdir -p "$MUNGE_DIR"/{etc,run,log,lib}
  chown munge:munge "$MUNGE_DIR"/{etc,run,log,lib}
  chmod 700 "$MUNGE_DIR"/{etc,log,lib}
  chmod 755 "$MUNGE_DIR/run"
  if [ ! -s "$MUNGE_KEY" ]; then
    rm -f "$MUNGE_KEY"
    if command -v mungekey >/dev/null 2>&1; then
      runuser -u munge -- mungekey --create --keyfile="$MUNGE_KEY" >/dev/null
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge "$MUNGE_KEY"
  chmod 600 "$MUNGE_KEY"
  if daemon_alive "$MUNGE_PID" munged && munge_ok; then
    return 0
  fi
  stop_daemon munged "$MUNGE_PID" munged
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
  log "starting munged"
  # munged forks into the background by itself and writes its pid file.
  runuser -u munge -- munged --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" --pid-file="$MUNGE_PID" \
    --seed-file="$MUNGE_DIR/lib/munged.seed" --log-file="$MUNGE_DIR/log/munged.log" --force \
    </dev/null >>"$LOG/munged.out" 2>&1 9>&- ||
    fail_with_log "munged failed to start" "$MUNGE_DIR/log/munged.log" "$LOG/munged.out"
  wait_until "$TIMEOUT" munge_ok ||
    fail_with_log "munged did not answer on $MUNGE_SOCK within ${TIMEOUT}s" "$MUNGE_DIR/log/munged.log" "$LOG/munged.out"
}

# ---------------------------------------------------------------------------------------------------
# MariaDB + slurmdbd (accounting, so that sacct works)
# ---------------------------------------------------------------------------------------------------
db_ok() { mariadb-admin --no-defaults --socket="$DB_SOCK" -uroot ping >/dev/null 2>&1; }

start_mariadb() {
  mkdir -p "$DB_DIR"
  if [ ! -d "$DB_DATA/mysql" ]; then
    log "initialising MariaDB data folder"
    rm -rf "$DB_DATA"
    mariadb-install-db --no-defaults --user=root --datadir="$DB_DATA" --auth-root-authentication-method=socket \
      --skip-test-db >>"$LOG/mariadb-install.log" 2>&1 ||
      fail_with_log "mariadb-install-db failed" "$LOG/mariadb-install.log"
  fi
  if daemon_alive "$DB_PID" mariadbd && db_ok; then
    return 0
  fi
  stop_daemon mariadbd "$DB_PID" mariadbd
  check_port_free "$DB_PORT" mariadbd
  log "starting mariadbd"
  spawn "$LOG/mariadbd.out" mariadbd --no-defaults --user=root --datadir="$DB_DATA" --socket="$DB_SOCK" \
    --pid-file="$DB_PID" --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$LOG/mariadbd.log" \
    --skip-name-resolve --innodb-lock-wait-timeout=900
  local rc=0
  wait_started "$SPAWNED_PID" "$TIMEOUT" db_ok || rc=$?
  started_or_fail mariadbd "answer on $DB_SOCK" "$rc" "$LOG/mariadbd.log" "$LOG/mariadbd.out"
  local pass
  pass=$(db_password)
  mariadb --no-defaults --socket="$DB_SOCK" -uroot >>"$LOG/mariadb-setup.log" 2>&1 <<SQL ||
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
    fail_with_log "could not create the slurm database user" "$LOG/mariadb-setup.log" "$LOG/mariadbd.log"
}

db_password() {
  if [ ! -s "$DB_PASS_FILE" ]; then
    (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$DB_PASS_FILE")
  fi
  cat "$DB_PASS_FILE"
}

write_slurmdbd_conf() {
  local tmp=$DBD_CONF.tmp
  (
    umask 077
    cat >"$tmp" <<EOF
# Generated by tools/slurm_cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$SLURMDBD_PID
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF
  )
  mv -f "$tmp" "$DBD_CONF"
  chmod 600 "$DBD_CONF"
}

start_slurmdbd() {
  write_slurmdbd_conf
  if daemon_alive "$SLURMDBD_PID" slurmdbd && port_open "$DBD_PORT"; then
    return 0
  fi
  stop_daemon slurmdbd "$SLURMDBD_PID" slurmdbd
  check_port_free "$DBD_PORT" slurmdbd
  log "starting slurmdbd"
  spawn "$LOG/slurmdbd.out" slurmdbd -D
  local rc=0
  wait_started "$SPAWNED_PID" "$TIMEOUT" port_open "$DBD_PORT" || rc=$?
  started_or_fail slurmdbd "listen on port $DBD_PORT" "$rc" "$LOG/slurmdbd.log" "$LOG/slurmdbd.out"
}

# ---------------------------------------------------------------------------------------------------
# slurm.conf, slurmctld, slurmd
# ---------------------------------------------------------------------------------------------------
node_name() { uname -n | cut -d. -f1; }

# The node's hardware line from `slurmd -C` (CPUs=…, sockets, cores, threads, RealMemory=…).
node_hardware() {
  local line
  line=$(slurmd -C 2>/dev/null | head -n 1) || true
  line=$(printf '%s' "$line" | sed -e 's/^NodeName=[^ ]* *//')
  [ -n "$line" ] || line="CPUs=$(nproc)"
  printf '%s' "$line"
}

write_slurm_conf() {
  local node=$1 tmp=$CONF.tmp
  cat >"$tmp" <<EOF
# Generated by tools/slurm_cluster.sh: a single-node cluster for tests and local runs.
ClusterName=lmhpc
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job may start again after ~11 s instead of the default ~121 s.
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# With a non-default munge socket, the accounting client finds munge through this.
AccountingStoragePass=$MUNGE_SOCK
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
ReturnToService=2
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$node NodeAddr=127.0.0.1 $(node_hardware) State=UNKNOWN
PartitionName=debug  Nodes=$node Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=15
PartitionName=urgent Nodes=$node Default=NO  MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$CONF"
  fi
}

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

node_state() { sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n 1; }

node_idle() {
  local s
  s=$(node_state "$1")
  [ "$s" = idle ] || [ "$s" = mixed ] || [ "$s" = allocated ] || [ "$s" = completing ]
}

start_slurmctld() {
  mkdir -p "$BASE/state"
  if daemon_alive "$SLURMCTLD_PID" slurmctld && ctld_up; then
    return 0
  fi
  stop_daemon slurmctld "$SLURMCTLD_PID" slurmctld
  check_port_free "$CTLD_PORT" slurmctld
  log "starting slurmctld"
  spawn "$LOG/slurmctld.out" slurmctld -D -i
  local rc=0
  wait_started "$SPAWNED_PID" "$TIMEOUT" ctld_up || rc=$?
  started_or_fail slurmctld "answer 'scontrol ping'" "$rc" "$LOG/slurmctld.log" "$LOG/slurmctld.out"
}

# Sets SLURMD_RUNNING_PID: slurmd writes its pid file only once it has initialised.
SLURMD_RUNNING_PID=
start_slurmd() {
  local node=$1
  mkdir -p "$BASE/spool"
  if SLURMD_RUNNING_PID=$(pid_from_file "$SLURMD_PID") && pid_alive "$SLURMD_RUNNING_PID" slurmd; then
    return 0
  fi
  check_port_free "$SLURMD_PORT" slurmd
  log "starting slurmd"
  spawn "$LOG/slurmd.out" slurmd -D -N "$node"
  SLURMD_RUNNING_PID=$SPAWNED_PID
}

wait_node_idle() {
  local node=$1 deadline=$((SECONDS + TIMEOUT)) state resumed=0
  while :; do
    state=$(node_state "$node")
    case "$state" in
    idle | mixed | allocated | completing) return 0 ;;
    *drain* | down* | fail*)
      if [ "$resumed" = 0 ] && daemon_alive "$SLURMD_PID" slurmd; then
        log "node $node is '$state'; resuming it"
        scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
        resumed=1
      fi
      ;;
    esac
    pid_alive "$SLURMD_RUNNING_PID" ||
      fail_with_log "slurmd exited while starting" "$LOG/slurmd.log" "$LOG/slurmd.out"
    if ((SECONDS >= deadline)); then
      fail_with_log "node $node is '${state:-unknown}', not idle, after ${TIMEOUT}s" \
        "$LOG/slurmd.log" "$LOG/slurmctld.log" "$LOG/slurmd.out"
    fi
    sleep 0.2
  done
}

all_running() {
  daemon_alive "$MUNGE_PID" munged && daemon_alive "$DB_PID" mariadbd &&
    daemon_alive "$SLURMDBD_PID" slurmdbd && daemon_alive "$SLURMCTLD_PID" slurmctld &&
    daemon_alive "$SLURMD_PID" slurmd && ctld_up
}

cmd_start() {
  require_root start
  take_lock
  # Daemons keep the folder they start in as their working directory: not the caller's checkout.
  cd "$BASE"
  local t0=$SECONDS
  mkdir -p "$ETC" "$RUN" "$LOG"
  chmod 755 "$BASE" "$ETC" "$RUN" "$LOG"
  install_packages
  local node
  node=$(node_name)
  if [ -f "$CONF" ] && all_running && node_idle "$node"; then
    log "already running (base $BASE)"
    return 0
  fi
  preflight_ports
  start_munge
  start_mariadb
  start_slurmdbd
  write_slurm_conf "$node"
  start_slurmctld
  start_slurmd "$node"
  wait_node_idle "$node"
  log "cluster up in $((SECONDS - t0))s: node $node idle; base $BASE"
  log "clients need: export SLURM_CONF=$CONF"
}

# Kill slurmstepd processes left by this cluster's slurmd (they carry our SLURM_CONF in their environment).
kill_stray_stepds() {
  local p pid
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    pid_alive "$pid" || continue
    tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" || continue
    log "killing stray slurmstepd (pid $pid)"
    kill -KILL "$pid" 2>/dev/null || true
  done
}

queue_empty() { [ -z "$(squeue -h -o %i 2>/dev/null)" ]; }

cmd_stop() {
  require_root stop
  take_lock
  if [ -f "$CONF" ] && daemon_alive "$SLURMCTLD_PID" slurmctld && ctld_up; then
    local jobs
    jobs=$(squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      # Give them KillWait (5 s) and a margin to end, so their final state reaches accounting.
      wait_until 15 queue_empty || log "some jobs still listed; stopping anyway"
    fi
  fi
  stop_daemon slurmd "$SLURMD_PID" slurmd
  stop_daemon slurmctld "$SLURMCTLD_PID" slurmctld
  stop_daemon slurmdbd "$SLURMDBD_PID" slurmdbd
  stop_daemon mariadbd "$DB_PID" mariadbd
  stop_daemon munged "$MUNGE_PID" munged
  kill_stray_stepds
  log "stopped (base $BASE)"
}

cmd_status() {
  local name pidfile comm pid state running=1
  for spec in "munged:$MUNGE_PID:munged" "mariadbd:$DB_PID:mariadbd" "slurmdbd:$SLURMDBD_PID:slurmdbd" \
    "slurmctld:$SLURMCTLD_PID:slurmctld" "slurmd:$SLURMD_PID:slurmd"; do
    IFS=: read -r name pidfile comm <<<"$spec"
    if daemon_alive "$pidfile" "$comm"; then
      pid=$(pid_from_file "$pidfile")
      state="running (pid $pid)"
    else
      state="not running"
      running=0
    fi
    printf '%-10s %s\n' "$name" "$state"
  done
  if [ "$running" = 1 ] && ctld_up; then
    echo "cluster: running (base $BASE)"
    echo "SLURM_CONF=$CONF"
    sinfo
    return 0
  fi
  echo "cluster: not running (base $BASE)"
  return 1
}

cmd_env() {
  printf 'export SLURM_CONF=%q\n' "$CONF"
}

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
-h | --help | help) usage ;;
*)
  usage >&2
  exit 2
  ;;
esac
