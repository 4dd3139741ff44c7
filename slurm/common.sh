# Sourced by every slurm/<stage>.sbatch: finds the checkout and its interpreter, exports the
# executor marker, and runs one stage with srun so that SLURM's --signal reaches the tasks.
# Submit from the checkout's root, or export LMHPC_ROOT=/path/to/lmhpc first.
set -euo pipefail
LMHPC_ROOT=${LMHPC_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
LMHPC_PYTHON=${LMHPC_PYTHON:-$LMHPC_ROOT/.venv/bin/python}
export LMHPC_EXECUTOR=slurm PYTHONUNBUFFERED=1
# the job stays in the folder it was submitted from (relative config paths keep working)
export PYTHONPATH="$LMHPC_ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -x "$LMHPC_PYTHON" ] && ! command -v "$LMHPC_PYTHON" >/dev/null 2>&1; then
  echo "lmhpc: no interpreter at $LMHPC_PYTHON (set LMHPC_PYTHON or LMHPC_ROOT)" >&2
  exit 2
fi
echo "lmhpc: job ${SLURM_JOB_ID:-?} (array task ${SLURM_ARRAY_TASK_ID:--}) restart ${SLURM_RESTART_COUNT:-0} on $(hostname)"

# This array task's index in its stage: the array index plus LMHPC_TASK_OFFSET, set by slurm/pipeline.sh
# when a stage has more tasks than the cluster's MaxArraySize and goes out as several arrays.
lmhpc_array_task() {
  echo $(( ${LMHPC_TASK_OFFSET:-0} + ${SLURM_ARRAY_TASK_ID:-0} ))
}

# lmhpc_stage STAGE CONFIG [overrides...] [--task I [--num-tasks N]] [--finalize]
# (array stages: the number of tasks is the config's resources.<stage>.tasks unless --num-tasks says)
lmhpc_stage() {
  local stage=$1; shift
  # python on every task of this step; MPI stages add --mpi via LMHPC_SRUN_ARGS
  case " ${LMHPC_SRUN_ARGS:-} " in
    # a requeued job keeps its id, and MPICH its shared-memory name: clear what killed ranks left behind
    *" --mpi="*) "$LMHPC_PYTHON" -m lmhpc.launch.crash --mpi-shm || true ;;
  esac
  local code=0
  # shellcheck disable=SC2086
  srun --kill-on-bad-exit=1 ${LMHPC_SRUN_ARGS:-} "$LMHPC_PYTHON" -m lmhpc stage "$stage" "$@" || code=$?
  # a rank killed by a signal (kill -9, OOM, segfault) without the stage failing on its own: requeue the job
  # (within resources.<stage>.max_requeues); it resumes from its finished units or last checkpoint
  if [ "$code" -ge 128 ] && "$LMHPC_PYTHON" -m lmhpc.launch.crash --stage-args "$code" "$stage" "$@"; then
    exit 75
  fi
  return "$code"
}

# torch stages: rendezvous on the first node of the allocation
lmhpc_torch_env() {
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  MASTER_PORT=$((20000 + SLURM_JOB_ID % 40000))
  export MASTER_ADDR MASTER_PORT
}
