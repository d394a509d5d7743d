#!/usr/bin/env bash
# configs/wan21_i2v_grpo.yaml on this machine's GPUs (see the preset's header for its source and docs/models.md, "Video").
#
# Before the first run: the prompt files its data section names, the reward models' local folders (set in the
# config or as overrides), and the Wan weights (model.path: the hub id, or a local copy).
#
# Usage: [NUM_GPUS=8] scripts/train_wan21_i2v_grpo.sh [key=value ...]
# Environment: as scripts/launch.sh (NUM_GPUS, ACCELERATE_CONFIG, ACCELERATE, PYTHON); under an FSDP accelerate
# config FSDP wraps Wan's transformer blocks (FSDP_LAYERS).
set -euo pipefail
export FSDP_LAYERS="${FSDP_LAYERS:-WanTransformerBlock}"
exec "$(dirname "$0")/launch.sh" configs/wan21_i2v_grpo.yaml "$@"
