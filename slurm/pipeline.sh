#!/bin/bash
# Submit the whole chain with plain sbatch, each stage after the previous one succeeded:
#   slurm/pipeline.sh CONFIG [key.sub=value ...]
# The stages, their kinds and task counts come from the config (`lmhpc plan CONFIG`): an array stage
# goes out as `--array=0-<tasks-1>` (several arrays when it has more tasks than the cluster's
# MaxArraySize, each told its first task in LMHPC_TASK_OFFSET) and a finalize job after all of them, an
# MPI stage as `--ntasks=<tasks>`, a torch stage as `--ntasks-per-node=<tasks>`. sbatch options that
# follow on a plan line (the stage's resources: --time, --mem, --partition...) are passed on, the
# cluster's (--partition, --account, --qos) to its finalize job too. A stage runs
# slurm/<stage>.sbatch, or slurm/stage.sbatch when it has no script of its own. sbatch's own
# SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_QOS set the cluster's defaults; LMHPC_PYTHON the interpreter
# (default: the checkout's .venv). Prints one "stage job-id" line per job.
set -euo pipefail
CONFIG=${1:?usage: slurm/pipeline.sh CONFIG [key.sub=value ...]}; shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LMHPC_ROOT=${LMHPC_ROOT:-$(dirname "$HERE")}
LMHPC_PYTHON=${LMHPC_PYTHON:-$LMHPC_ROOT/.venv/bin/python}
# jobs start in this folder (their logs land here); the config path is taken as given

# Submitted from inside a job, the new jobs must not inherit what that job was given (its memory,
# tasks, array...): drop every SLURM_*/SBATCH_* variable but the one that says where the cluster is.
if [ -n "${SLURM_JOB_ID:-}" ]; then
  while IFS= read -r name; do
    [ "$name" = SLURM_CONF ] || unset "$name"
  done < <(compgen -e | grep -E '^(SLURM|SBATCH)_' || true)
fi

plan=$(PYTHONPATH="$LMHPC_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$LMHPC_PYTHON" -m lmhpc plan "$CONFIG" "$@")
max_array=$(scontrol show config 2>/dev/null | sed -nE 's/^MaxArraySize[[:space:]]*=[[:space:]]*([0-9]+).*/\1/p' || true)
max_array=${max_array:-1001}
if [ "$max_array" -lt 1 ]; then
  echo "pipeline.sh: MaxArraySize=$max_array: job arrays are disabled on this cluster" >&2
  exit 2
fi

dep=()
last=
submit() { # name, then sbatch arguments; prints "name id" and leaves the id in $last
  local name=$1; shift
  last=$(sbatch --parsable --kill-on-invalid-dep=yes "${dep[@]}" "$@" </dev/null)
  last=${last%%;*}
  echo "$name $last"
}

while read -r stage kind tasks options; do
  [ -n "$stage" ] || continue
  read -ra extra <<<"$options"
  where=()
  for option in "${extra[@]}"; do
    case $option in --partition=* | --account=* | --qos=*) where+=("$option") ;; esac
  done
  if [ -f "$HERE/$stage.sbatch" ]; then
    script=("${extra[@]}" "$HERE/$stage.sbatch")
  else
    script=("${extra[@]}" --job-name="lmhpc.$stage" "$HERE/stage.sbatch" "$stage")
  fi
  case $kind in
    array)
      arrays=()
      for ((start = 0; start < tasks; start += max_array)); do
        n=$((tasks - start < max_array ? tasks - start : max_array))
        submit "$stage" --array="0-$((n - 1))" --export="ALL,LMHPC_TASK_OFFSET=$start,LMHPC_STAGE_KIND=array" \
          "${script[@]}" "$CONFIG" "$@"
        arrays+=("$last")
      done
      dep=(--dependency="afterok:$(IFS=:; echo "${arrays[*]}")")
      submit "$stage.finalize" "${where[@]}" "$HERE/finalize.sbatch" "$stage" "$CONFIG" "$@" ;;
    mpi) submit "$stage" --ntasks="$tasks" --export="ALL,LMHPC_STAGE_KIND=mpi" "${script[@]}" "$CONFIG" "$@" ;;
    torch)
      submit "$stage" --ntasks-per-node="$tasks" --export="ALL,LMHPC_STAGE_KIND=torch" "${script[@]}" "$CONFIG" "$@" ;;
    single) submit "$stage" --export="ALL,LMHPC_STAGE_KIND=single" "${script[@]}" "$CONFIG" "$@" ;;
    *) echo "pipeline.sh: stage '$stage' has an unknown kind '$kind'" >&2; exit 2 ;;
  esac
  dep=(--dependency="afterok:$last")
done <<<"$plan"
