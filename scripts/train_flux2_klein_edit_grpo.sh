#!/usr/bin/env bash
# Pref-GRPO, FLUX.2 [klein] base 9B editing (reference images) + the UnifiedReward-Edit pairwise judge, LoRA
# (configs/flux2_klein_edit_grpo.yaml) on this machine's GPUs.
#
# Before the first run:
#   - edit rows: data/edit/train.jsonl and test.jsonl, one {"prompt": <instruction>, "image": <path or list>} a line
#     (paths relative to the file; store the sources at 512 x 512 as the preset's data section says); bad rows are
#     refused with their line before any model loads (`flowrl train --check`)
#   - the judge, started FIRST on GPUs the trainer does not use (vLLM, OpenAI-compatible API), as the preset's reward
#     comment says (served model name UnifiedReward); wait until `curl $JUDGE_URL/models` answers
#   - the model: model.path is the hub id; point it at a local copy on machines without network
#
# Usage: [NUM_GPUS=8] [JUDGE_URL=...] scripts/train_flux2_klein_edit_grpo.sh [key=value ...]
#   e.g. CUDA_VISIBLE_DEVICES=0,1,2,3 NUM_GPUS=4 JUDGE_URL=http://127.0.0.1:8080/v1 scripts/train_flux2_klein_edit_grpo.sh
# Environment: JUDGE_URL (http://127.0.0.1:8080/v1: the API base, without /chat/completions), and as
# scripts/launch.sh (NUM_GPUS, ACCELERATE_CONFIG, ACCELERATE, PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."

export JUDGE_URL="${JUDGE_URL:-http://127.0.0.1:8080/v1}"  # launch.sh puts it into the judge's options
if command -v curl >/dev/null && ! curl -sf --max-time 10 "${JUDGE_URL%/}/models" >/dev/null; then
    echo "warning: no judge answers at ${JUDGE_URL%/}/models; start the vLLM server first (see this script)" >&2
fi
exec scripts/launch.sh configs/flux2_klein_edit_grpo.yaml "$@"
