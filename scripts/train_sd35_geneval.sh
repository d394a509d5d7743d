#!/usr/bin/env bash
# Flow-GRPO, SD3.5 Medium + GenEval rule reward, LoRA (configs/sd35_geneval.yaml) on this machine's GPUs.
#
# Before the first run:
#   - prompts and metadata from yifan123/flow_grpo dataset/geneval/: one prompt per line of train_metadata.jsonl
#     into data/geneval/train.txt, the unique prompts of test_metadata.jsonl into data/geneval/test.txt, both
#     metadata files concatenated into data/geneval/metadata.jsonl, e.g.
#       python -c 'import json,sys; [print(json.loads(l)["prompt"]) for l in open(sys.argv[1]) if l.strip()]' \
#         train_metadata.jsonl > data/geneval/train.txt
#       python -c 'import json,sys; print(*dict.fromkeys(json.loads(l)["prompt"] for l in open(sys.argv[1])
#         if l.strip()), sep="\n")' test_metadata.jsonl > data/geneval/test.txt
#       cat train_metadata.jsonl test_metadata.jsonl > data/geneval/metadata.jsonl
#   - a detector, started first, in ONE of two ways:
#     a) a detection server that answers flowrl's wire format (rewards/geneval.py docstring: POST JSON with
#        PNG images -> {"detections": [[{label, score, box, colour}, ...], ...]}), e.g. GenEval's Mask2Former
#        detector and CLIP colour classifier wrapped in a small HTTP service; then
#          DETECTOR_URL=http://127.0.0.1:8100 scripts/train_sd35_geneval.sh
#     b) the whole reward behind `flowrl serve-reward` (e.g. on another GPU or node) with your detector class:
#          flowrl serve-reward --reward geneval --port 8101 --options detector=yourpkg.detect:Detector \
#            metadata=data/geneval/metadata.jsonl
#          REWARD_URL=http://127.0.0.1:8101 scripts/train_sd35_geneval.sh   # uses the `remote` reward
#
# Usage: [NUM_GPUS=8] [DETECTOR_URL=...|REWARD_URL=...] scripts/train_sd35_geneval.sh [key=value ...]
# Environment: DETECTOR_URL (http://127.0.0.1:8100), REWARD_URL (unset), and as scripts/launch.sh (NUM_GPUS,
# ACCELERATE_CONFIG, ACCELERATE, PYTHON).
# train.prompts_per_step counts prompts over all GPUs: the preset's value is the published batch for any NUM_GPUS.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=configs/sd35_geneval.yaml
export DETECTOR_URL="${DETECTOR_URL:-http://127.0.0.1:8100}"  # launch.sh puts it into the geneval reward
REWARD_URL="${REWARD_URL:-}"
if [[ -n "$REWARD_URL" ]]; then
    unset DETECTOR_URL
    exec scripts/launch.sh "$CONFIG" "rewards=[{name: remote, weight: 1.0, options: {url: '$REWARD_URL', timeout: 300}}]" "$@"
fi
exec scripts/launch.sh "$CONFIG" "$@"
