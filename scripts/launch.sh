#!/usr/bin/env bash
# Launch `flowrl train` on this machine's GPUs with a preset: the shared part of the per-model launchers.
#
# Usage: [NUM_GPUS=8] scripts/launch.sh configs/<preset>.yaml [key=value ...]
# Environment: NUM_GPUS (8), ACCELERATE_CONFIG (configs/accelerate/ddp.yaml), ACCELERATE (accelerate).
# train.prompts_per_step counts prompts over all GPUs: a preset's value is its published batch for any NUM_GPUS.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG="$1"
shift
NUM_GPUS="${NUM_GPUS:-8}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-configs/accelerate/ddp.yaml}"
ACCELERATE="${ACCELERATE:-accelerate}"

exec "$ACCELERATE" launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_GPUS" \
    -m flowrl train --config "$CONFIG" "$@"
