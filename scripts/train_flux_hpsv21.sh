#!/usr/bin/env bash
# MixGRPO, FLUX.1-dev + HPSv2.1, LoRA (configs/flux_hpsv21.yaml) on this machine's GPUs.
#
# Before the first run:
#   - prompts: MixGRPO's data/prompts.txt and data/prompts_test.txt (HPDv2) into data/hpdv2/train.txt, test.txt
#   - HPS_v2.1_compressed.pt from the xswu/HPSv2 hub repo; set its path in the config or as an override
#   - FLUX.1-dev: accept its licence on the hub (model.path is the hub id) or point model.path at a local copy
#
# Usage: [NUM_GPUS=8] scripts/train_flux_hpsv21.sh [key=value ...]
#   full fine-tuning as MixGRPO (FSDP: weights, gradients and AdamW state sharded):
#   ACCELERATE_CONFIG=configs/accelerate/fsdp.yaml scripts/train_flux_hpsv21.sh model.finetune=full \
#     model.weights_dtype=fp32 train.lr=1e-5
# Environment: as scripts/launch.sh (NUM_GPUS, ACCELERATE_CONFIG, ACCELERATE, PYTHON); under an FSDP accelerate config
# FSDP wraps FLUX's two block classes (FSDP_LAYERS).
# train.prompts_per_step counts prompts over all GPUs: the preset's value is the published batch for any NUM_GPUS.
set -euo pipefail
export FSDP_LAYERS="${FSDP_LAYERS:-FluxTransformerBlock,FluxSingleTransformerBlock}"
exec "$(dirname "$0")/launch.sh" configs/flux_hpsv21.yaml "$@"
