#!/usr/bin/env bash
# Online Diffusion-DPO, FLUX.1-dev + PickScore, LoRA (configs/flux_dpo_pickscore.yaml) on this machine's GPUs.
#
# Before the first run: the prompt files, reward checkpoints and model access named in the preset's comments.
#
# Usage: [NUM_GPUS=8] scripts/train_flux_dpo_pickscore.sh [key=value ...]
# Environment: as scripts/launch.sh (NUM_GPUS, ACCELERATE_CONFIG, ACCELERATE, PYTHON); under an FSDP accelerate config
# FSDP wraps FLUX's two block classes (FSDP_LAYERS).
set -euo pipefail
export FSDP_LAYERS="${FSDP_LAYERS:-FluxTransformerBlock,FluxSingleTransformerBlock}"
exec "$(dirname "$0")/launch.sh" configs/flux_dpo_pickscore.yaml "$@"
