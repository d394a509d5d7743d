#!/usr/bin/env bash
# Online Diffusion-DPO, SD3.5 Medium + PickScore, LoRA (configs/sd35_dpo_pickscore.yaml) on this machine's GPUs.
#
# Before the first run:
#   - prompts: copy dataset/pickscore/train.txt and test.txt of yifan123/flow_grpo into data/pickscore/
#   - PickScore: yuvalkirstain/PickScore_v1 (CLIPModel) plus the tokenizer files of
#     laion/CLIP-ViT-H-14-laion2B-s32B-b79K in one folder; set its path below or as an override
#   - SD3.5 Medium: accept its licence on the hub (model.path is the hub id) or point model.path at a local copy
#
# Usage: [NUM_GPUS=8] scripts/train_sd35_dpo_pickscore.sh [key=value ...]
#   e.g. NUM_GPUS=8 scripts/train_sd35_dpo_pickscore.sh loss.dpo.ref_update_step=40   # online: refresh every 40
#   (train.prompts_per_step must stay a multiple of NUM_GPUS: DPO keeps each prompt's group on one GPU)
# Environment: as scripts/launch.sh (NUM_GPUS, ACCELERATE_CONFIG, ACCELERATE, PYTHON).
set -euo pipefail
exec "$(dirname "$0")/launch.sh" configs/sd35_dpo_pickscore.yaml "$@"
