#!/usr/bin/env bash
# Flow-GRPO, Qwen-Image-Edit editing + GenEval counting + CLIP image similarity,
# LoRA (configs/qwen_image_edit_grpo.yaml) on this machine's GPUs.
#
# Before the first run:
#   - edit rows: data/edit/train.jsonl and test.jsonl, one {"prompt": <instruction>, "image": <path or list>} a line
#     (paths relative to the file; the preset's data section says the image size); bad rows are refused with
#     their line before any model loads (`flowrl train --check`)
#   - reward models: local folders, set in the config or as overrides (docs/rewards.md, "Rewards for editing")
#   - Qwen-Image-Edit: model.path is the hub id; point it at a local copy on machines without network
#
# Usage: [NUM_GPUS=8] scripts/train_qwen_image_edit_grpo.sh [key=value ...]
#   e.g. NUM_GPUS=4 scripts/train_qwen_image_edit_grpo.sh model.path=/models/qwen_image_edit train.iterations=100
# Environment: DETECTOR_URL (the GenEval detection server; default the preset's http://127.0.0.1:8100) and as
# scripts/launch.sh (NUM_GPUS, ACCELERATE_CONFIG, ACCELERATE, PYTHON).
set -euo pipefail
exec "$(dirname "$0")/launch.sh" configs/qwen_image_edit_grpo.yaml "$@"
