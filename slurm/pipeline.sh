#!/bin/bash
# Submit the whole chain with plain sbatch, each stage after the previous one succeeded:
#   slurm/pipeline.sh CONFIG [key.sub=value ...]
# Environment: STAGES (default "curate dedup tokenizer tokenize pretrain"), CURATE_TASKS and
# TOKENIZE_TASKS (array sizes, default 2), DEDUP_RANKS (default 2), plus sbatch's own SBATCH_PARTITION,
# SBATCH_ACCOUNT, SBATCH_QOS for the cluster. Prints one "stage job-id" line per job.
set -euo pipefail
CONFIG=${1:?usage: slurm/pipeline.sh CONFIG [key.sub=value ...]}; shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LMHPC_ROOT=${LMHPC_ROOT:-$(dirname "$HERE")}
# jobs start in this folder (their logs land here); the config path is taken as given
STAGES=${STAGES:-curate dedup tokenizer tokenize pretrain}
dep=()
submit() { # name, then sbatch arguments
  local name=$1; shift
  local id
  id=$(sbatch --parsable --kill-on-invalid-dep=yes "${dep[@]}" "$@")
  id=${id%%;*}
  echo "$name $id"
  dep=(--dependency="afterok:$id")
}
for stage in $STAGES; do
  case $stage in
    curate|tokenize)
      var=$(echo "${stage}_TASKS" | tr '[:lower:]' '[:upper:]')
      n=${!var:-2}
      submit "$stage" --array="0-$((n - 1))" "$HERE/$stage.sbatch" "$CONFIG" "$@"
      submit "$stage.finalize" "$HERE/finalize.sbatch" "$stage" "$CONFIG" "$@" ;;
    dedup) submit dedup --ntasks="${DEDUP_RANKS:-2}" "$HERE/dedup.sbatch" "$CONFIG" "$@" ;;
    tokenizer|pretrain) submit "$stage" "$HERE/$stage.sbatch" "$CONFIG" "$@" ;;
    *) echo "pipeline.sh: unknown stage '$stage'" >&2; exit 2 ;;
  esac
done
