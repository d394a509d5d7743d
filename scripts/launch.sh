#!/usr/bin/env bash
# Launch `flowrl train` on this machine's GPUs with a preset: the shared part of the per-model launchers.
#
# Usage: [NUM_GPUS=8] scripts/launch.sh configs/<preset>.yaml [key=value ...]
# Environment: NUM_GPUS (8), ACCELERATE_CONFIG (configs/accelerate/ddp.yaml), ACCELERATE (accelerate), PYTHON (the
# python beside accelerate), DETECTOR_URL / JUDGE_URL (reward servers replacing the preset's), FSDP_LAYERS (the
# block classes FSDP wraps, passed when ACCELERATE_CONFIG is an FSDP file; the FLUX launchers set FLUX's).
# The project's virtualenv (.venv, made by `make venv`) comes first on PATH: nothing needs activating.
# The config is checked once, in one process, before the launch (`flowrl train --check`): an error is one line and
# exit 2, not one copy per process and the launcher's traceback.
# train.prompts_per_step counts prompts over all GPUs: a preset's value is its published batch for any NUM_GPUS.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 ]]; then
    echo "usage: [NUM_GPUS=8] scripts/launch.sh configs/<preset>.yaml [key=value ...]" >&2
    exit 2
fi
CONFIG="$1"
shift
NUM_GPUS="${NUM_GPUS:-8}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-configs/accelerate/ddp.yaml}"
if [[ -x .venv/bin/python ]]; then
    PATH="$PWD/.venv/bin:$PATH"
fi
ACCELERATE="${ACCELERATE:-accelerate}"
if ! command -v "$ACCELERATE" >/dev/null; then
    echo "flowrl: launch error: '$ACCELERATE' not found: run \`make venv\` in $PWD (the launchers use its .venv)" \
        "or activate the environment flowrl is installed in" >&2
    exit 2
fi
if [[ -z "${PYTHON:-}" ]]; then  # the interpreter `accelerate launch -m flowrl` will run
    PYTHON="$(dirname "$(command -v "$ACCELERATE")")/python"
    [[ -x "$PYTHON" ]] || PYTHON=python3
fi

# reward servers named in the environment replace the preset's addresses (one `rewards=` override, as JSON, before
# the caller's own overrides, which still win): DETECTOR_URL for geneval's detector, JUDGE_URL for a VLM judge's API
if [[ -n "${DETECTOR_URL:-}${JUDGE_URL:-}" ]]; then
    rewards="$("$PYTHON" - "$CONFIG" <<'PY'
import json, os, sys
from flowrl.core.presets import yaml_load  # the YAML the trainer reads (1e-4 is a number, not a string)
rewards = yaml_load(open(sys.argv[1], encoding="utf-8"))["rewards"]
for r in rewards:
    options = r.setdefault("options", {})
    if r["name"] == "geneval" and os.environ.get("DETECTOR_URL"):
        options.setdefault("detector_options", {})["url"] = os.environ["DETECTOR_URL"]
    if r["name"] in ("vlm-judge", "vlm-edit-judge") and os.environ.get("JUDGE_URL"):
        options["base_url"] = os.environ["JUDGE_URL"]
print(json.dumps(rewards))
PY
)"
    set -- "rewards=$rewards" "$@"
fi

"$PYTHON" -m flowrl train --check --config "$CONFIG" "$@"

wrap=()
if [[ -n "${FSDP_LAYERS:-}" && "$(basename "$ACCELERATE_CONFIG")" == *fsdp* ]]; then
    wrap=(--fsdp_transformer_layer_cls_to_wrap "$FSDP_LAYERS")
fi
exec "$ACCELERATE" launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_GPUS" ${wrap[@]+"${wrap[@]}"} \
    -m flowrl train --config "$CONFIG" "$@"
