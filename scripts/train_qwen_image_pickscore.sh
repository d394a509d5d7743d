#!/usr/bin/env bash
# Flow-GRPO-Fast, Qwen-Image-2512 + CLIP + PickScore, LoRA (configs/qwen_image_pickscore.yaml) on this machine's GPUs.
#
# Before the first run:
#   - prompts: copy dataset/pickscore/train.txt and test.txt of yifan123/flow_grpo into data/pickscore/
#   - reward models: local folders, set in the config or as overrides (the README's rewards section says which)
#   - the model: model.path is the hub id; point it at a local copy on machines without network
#
# Usage: [NUM_GPUS=8] scripts/train_qwen_image_pickscore.sh [key=value ...]
#   e.g. NUM_GPUS=4 scripts/train_qwen_image_pickscore.sh model.path=/models/qwen_image train.iterations=100
# Environment: as scripts/launch.sh (NUM_GPUS, ACCELERATE_CONFIG, ACCELERATE, PYTHON).
set -euo pipefail
exec "$(dirname "$0")/launch.sh" configs/qwen_image_pickscore.yaml "$@"
