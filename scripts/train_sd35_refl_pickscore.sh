#!/usr/bin/env bash
# ReFL, SD3.5 Medium + PickScore, full fine-tune (configs/sd35_refl_pickscore.yaml) on this machine's GPUs.
#
# Before the first run: the prompt files, reward checkpoints and model access named in the preset's comments.
#
# Usage: [NUM_GPUS=8] scripts/train_sd35_refl_pickscore.sh [key=value ...]
#   the preset fine-tunes every weight as ReFL.py: shard it with FSDP,
#   ACCELERATE_CONFIG=configs/accelerate/fsdp.yaml NUM_GPUS=8 scripts/train_sd35_refl_pickscore.sh
#   or on one GPU with LoRA: scripts/train_sd35_refl_pickscore.sh model.finetune=lora model.lora_rank=32 train.lr=1e-4
# Environment: as scripts/launch.sh (NUM_GPUS, ACCELERATE_CONFIG, ACCELERATE, PYTHON).
set -euo pipefail
exec "$(dirname "$0")/launch.sh" configs/sd35_refl_pickscore.yaml "$@"
