#!/bin/bash
# The main job: set up .venv (first time only), then run the whole pipeline on the shipped sample
# corpus with the local executor, on this machine's CPUs; then write the run's report
# (runs/demo/report/index.html), export the model (Hugging Face folder and Q8_0 GGUF under
# runs/demo/export/) and generate a few tokens with it, plainly, speculatively and with Medusa heads. Extra arguments go to `lmhpc run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash env/setup_cpu.sh
.venv/bin/lmhpc run configs/demo.yaml --executor local "$@"
run_dir=$(.venv/bin/python -c 'import sys; from lmhpc.config import load_config; print(load_config(sys.argv[1], sys.argv[2:]).run_dir)' \
  configs/demo.yaml $(printf '%s\n' "$@" | grep '=' | grep -v '^--' || true))
.venv/bin/lmhpc report "$run_dir"
# the trained model in the formats other tools read: transformers, llama.cpp
if [ -d "$run_dir/pretrain/checkpoints" ]; then
  .venv/bin/lmhpc export "$run_dir/pretrain" --format hf --out "$run_dir/export/hf" --overwrite
  .venv/bin/lmhpc export "$run_dir/pretrain" --format gguf --gguf-type q8_0 --out "$run_dir/export" --overwrite
  .venv/bin/lmhpc generate "$run_dir/pretrain" --prompt "The license" --max-new-tokens 24
fi
# the aligned model, decoded speculatively with the pretrained model as its draft (same output as greedy),
# and the pretrained model with its Medusa heads
if [ -d "$run_dir/dpo/checkpoints" ]; then
  .venv/bin/lmhpc generate "$run_dir/dpo" --prompt "The license" --max-new-tokens 24 --speculative "$run_dir/pretrain"
fi
if [ -f "$run_dir/medusa/heads.safetensors" ]; then
  .venv/bin/lmhpc generate "$run_dir/pretrain" --prompt "The license" --max-new-tokens 24 --medusa "$run_dir/medusa"
fi
echo "[demo] report: $run_dir/report/index.html; exports: $run_dir/export/"
