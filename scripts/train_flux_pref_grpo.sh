#!/usr/bin/env bash
# Pref-GRPO, FLUX.1-dev + pairwise UnifiedReward-Think judge + CLIP score, LoRA (configs/flux_pref_grpo.yaml).
#
# Before the first run:
#   - prompts: Pref-GRPO's data/unigenbench_train_data.txt into data/unigenbench/train.txt, and the prompt_en
#     column of its data/unigenbench_test_data.csv, one per line, into data/unigenbench/test.txt
#   - CLIP: laion/CLIP-ViT-H-14-laion2B-s32B-b79K (transformers files) in a local folder; set its path in the
#     config or as an override
#   - FLUX.1-dev: accept its licence on the hub (model.path is the hub id) or point model.path at a local copy
#
# 1) Start the judge FIRST, on GPUs the trainer does not use (vLLM, OpenAI-compatible API), with the settings of
#    Pref-GRPO's vllm_utils/vllm_server_UnifiedReward_Think.sh, e.g. on GPUs 4-7:
#      CUDA_VISIBLE_DEVICES=4,5,6,7 vllm serve CodeGoat24/UnifiedReward-Think-qwen3vl-8b \
#        --served-model-name UnifiedReward --host 127.0.0.1 --port 8080 --tensor-parallel-size 4 \
#        --limit-mm-per-prompt.image 2 --trust-remote-code
#    and wait until `curl http://127.0.0.1:8080/v1/models` answers.
# 2) Train on the other GPUs:
#      CUDA_VISIBLE_DEVICES=0,1,2,3 NUM_GPUS=4 JUDGE_URL=http://127.0.0.1:8080/v1 scripts/train_flux_pref_grpo.sh
#
# Usage: [NUM_GPUS=8] [JUDGE_URL=...] scripts/train_flux_pref_grpo.sh [key=value ...]
# Environment: JUDGE_URL (http://127.0.0.1:8080/v1: the API base, without /chat/completions), and as
# scripts/launch.sh (NUM_GPUS, ACCELERATE_CONFIG, ACCELERATE, PYTHON);
# under an FSDP accelerate config FSDP wraps FLUX's two block classes (FSDP_LAYERS).
# train.prompts_per_step counts prompts over all GPUs: the preset's value is the published batch for any NUM_GPUS.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=configs/flux_pref_grpo.yaml
export JUDGE_URL="${JUDGE_URL:-http://127.0.0.1:8080/v1}"  # launch.sh puts it into the judge's options

if command -v curl >/dev/null && ! curl -sf --max-time 10 "${JUDGE_URL%/}/models" >/dev/null; then
    echo "warning: no judge answers at ${JUDGE_URL%/}/models; start the vLLM server first (see this script)" >&2
fi

export FSDP_LAYERS="${FSDP_LAYERS:-FluxTransformerBlock,FluxSingleTransformerBlock}"
exec scripts/launch.sh "$CONFIG" "$@"
