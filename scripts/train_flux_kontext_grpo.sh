#!/usr/bin/env bash
# Flow-GRPO, FLUX.1-Kontext-dev editing + GenEval counting + CLIP image similarity, LoRA
# (configs/flux_kontext_grpo.yaml) on this machine's GPUs.
#
# Before the first run:
#   - edit rows: data/edit/train.jsonl and test.jsonl, one {"prompt": <instruction>, "image": <path or list>} a line
#     (paths relative to the file; the preset's data section says the image size); bad rows are refused with
#     their line before any model loads (`flowrl train --check`)
#   - reward models: local folders, set in the config or as overrides (docs/rewards.md, "Rewards for editing")
#   - FLUX.1-Kontext-dev: accept its licence on the hub (model.path is the hub id) or point model.path at a local copy
#
# Usage: [NUM_GPUS=8] scripts/train_flux_kontext_grpo.sh [key=value ...]
#   e.g. NUM_GPUS=4 scripts/train_flux_kontext_grpo.sh model.path=/models/flux_kontext train.iterations=100
# Environment: DETECTOR_URL (the GenEval detection server; default the preset's http://127.0.0.1:8100) and as
# scripts/launch.sh (NUM_GPUS, ACCELERATE_CONFIG, ACCELERATE, PYTHON); under an FSDP accelerate config
# FSDP wraps FLUX's two block classes (FSDP_LAYERS).
set -euo pipefail
export FSDP_LAYERS="${FSDP_LAYERS:-FluxTransformerBlock,FluxSingleTransformerBlock}"
exec "$(dirname "$0")/launch.sh" configs/flux_kontext_grpo.yaml "$@"
