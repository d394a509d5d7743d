"""Shared configurations of the tiny training runs that many test files build on (not a test module).

The flow runs train the tiny toy-SD3 folder of the ``tiny_model`` fixture (tests/conftest.py), the text runs the
tiny Llama of ``lm_dir``; every helper returns a validated config, so a test adds only the overrides it is about.
"""

from __future__ import annotations

from flowrl.recipes import load_config

#: the options each flow sampler mode needs on top of ``TINY_ARGS`` to train (4 sampling steps)
MODES = {
    "flow-grpo": [],
    "flow-grpo-fast": ["sampler.window_size=2"],
    "mixgrpo": ["sampler.window_size=2", "sampler.window_options={shift_interval: 1}"],
    "mixgrpo-flash": ["sampler.window_size=2", "sampler.tail_steps=2"],
    "branchgrpo": ["sampler.split_steps=[0,2]", "sampler.branch_factor=2"],
    "branchgrpo-mix": ["sampler.split_steps=[0,2]", "sampler.branch_factor=2"],
    "singular": [
        "sampler.extra_tail_steps=[1]",
        "advantage.name=multi-granularity",
        "sampler.window_options={max_start: 2}",
    ],
    "ode": ["loss.name=nft", "train.timestep_fraction=0.5"],  # no transitions: a loss that trains on samples
}

#: the losses that train on pairs of a group's samples, on its best ones or through the sampler, on ODE rollouts
PREFERENCE_RUNS = {
    "dpo": ["sampler.mode=ode", "loss.name=dpo", "loss.dpo.renoise_count=2"],
    "best-of-n": ["sampler.mode=ode", "loss.name=best-of-n", "loss.best-of-n.renoise_count=2"],
    "smpo": ["sampler.mode=ode", "loss.name=smpo"],
    # direct reward backpropagation: a differentiable reward (the mean brightness)
    "draft": ["sampler.mode=ode", "loss.name=draft", "loss.draft.steps=2", "rewards=[{name: 'bad_rewards:good'}]"],
    "refl": ["sampler.mode=ode", "loss.name=refl", "loss.refl.window=2", "rewards=[{name: 'bad_rewards:good'}]"],
}


#: a tiny training run: 2 iterations of 2 prompts × 4 images, 4 steps, a short evaluation
TINY_ARGS = [
    "model.lora_rank=4",
    "model.lora_alpha=4",
    "sampler.num_steps=4",
    "train.iterations=2",
    "train.prompts_per_step=2",
    "train.group_size=4",
    "train.micro_batch=16",
    "train.lr=1e-2",
    "loss.clip_low=0.2",
    "loss.clip_high=0.2",
    "eval.num_prompts=3",
    "eval.seeds_per_prompt=1",
    "eval.num_steps=3",
    "eval.gallery_prompts=2",
    "output.progress=false",
    # a random tiny model scores 0 on the toy evaluator; JPEG size varies, so advantages are non-zero
    "rewards=[{name: toy-geneval}, {name: jpeg-compressibility, weight: 0.1}]",
]


def tiny_config(path: str, *overrides: str):
    """The flow ``Config`` of ``TINY_ARGS`` on the model folder ``path``, with ``overrides`` applied last."""
    return load_config(None, [f"model.path={path}", *TINY_ARGS, *overrides])


def text_config(path: str, *overrides: str):
    """A tiny text run on the causal LM folder ``path``: 3 prompts × 4 completions of 4 tokens per step."""
    return load_config(
        None,
        [
            "backend=text", f"model.path={path}", "model.lora_rank=4", "generation.max_new_tokens=4",
            "train.prompts_per_step=3", "train.group_size=4", "train.micro_batch=5", "train.lr=1e-2",
            "eval.num_prompts=4", "output.progress=false",
            "rewards=[{name: 'toy-text:correct'}, {name: 'toy-text:well_formed', weight: 0.5}]", *overrides,
        ],
    )  # fmt: skip


#: what each mode needs beyond the defaults to be a valid rollout in every (estimator, loss) combination
#: (branching modes: 4 leaves = the group size; the others an odd group, which the median estimator needs)
MODE_OPTIONS = {
    "flow-grpo": ["train.group_size=5"],
    "flow-grpo-fast": [
        "train.group_size=5",
        "sampler.window_size=2",
        "sampler.extra_tail_steps=[1]",
        "sampler.window_options={max_start: 1}",
    ],
    "mixgrpo": ["train.group_size=5", "sampler.window_size=2"],
    "mixgrpo-flash": ["train.group_size=5", "sampler.window_size=2", "sampler.tail_steps=2"],
    "branchgrpo": ["train.group_size=4", "sampler.branchgrpo.split_steps=[0,2]", "sampler.branchgrpo.branch_factor=2"],
    "branchgrpo-mix": ["train.group_size=4", "sampler.branchgrpo-mix.split_steps=[0,2]"],
    "singular": ["train.group_size=5", "sampler.extra_tail_steps=[1]", "sampler.window_options={max_start: 2}"],
    "ode": ["train.group_size=5", "sampler.tail_solver=dpm2m"],
}


#: the toy prompts of the tiny editing runs
EDIT_PROMPTS = ("a red circle", "a red square", "a green circle")


def write_edit_rows(folder, name: str, first: int, count: int) -> str:
    """``<folder>/<name>.jsonl``: rows ``first .. first + count`` of ``EDIT_PROMPTS``, each with its own random
    32×32 reference image (``<k>.png`` beside it); returns the file's path."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    folder, rows = Path(folder), []
    for k in range(first, first + count):
        pixels = np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k}.png")
        rows.append(json.dumps({"prompt": EDIT_PROMPTS[k], "image": f"{k}.png"}))
    (folder / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    return str(folder / f"{name}.jsonl")


def assert_lora_reproduces_velocity(run, pipeline_class, folder: str, out, prompt: str, inputs: dict) -> None:
    """The trained LoRA of ``run``, saved by our checkpoint code, loads into the family's diffusers pipeline with
    ``load_lora_weights`` and gives, through our adapter (the pipeline's network swapped in), the trained velocity
    for ``prompt`` with its row ``inputs`` (reference images)."""
    import torch

    from flowrl.image.run import save_checkpoint

    save_checkpoint(run, str(out / "ckpt"))
    pipe = pipeline_class.from_pretrained(folder)
    pipe.load_lora_weights(str(out / "ckpt" / "lora"), weight_name="pytorch_lora_weights.safetensors")
    x, sigma = torch.randn(1, *run.policy.latent_shape(32)), torch.full((1,), 0.6)
    cond = run.policy.condition([prompt], [inputs]).as_dict()
    with torch.no_grad():
        ours = run.policy.velocity(x, sigma, cond)
        run.policy.transformer, run.policy.prepared = pipe.transformer, None
        torch.testing.assert_close(run.policy.velocity(x, sigma, cond), ours, atol=1e-5, rtol=1e-4)


def write_pairs(folder, labels: list[float | None], size: int = 40) -> str:
    """A JSONL pair dataset in ``folder`` (a ``Path``): pair i's chosen image is bright, its rejected one dark (each
    with its own hue), labelled ``labels[i]`` (None: no label key); image paths relative to the file."""
    import json

    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, label in enumerate(labels):
        for kind, level in (("chosen", 220), ("rejected", 30)):
            colour = (level, (40 * i) % 255, 255 - level)
            Image.new("RGB", (size, size), colour).save(folder / "img" / f"{kind}{i}.png")
        row = {"prompt": f"a photo of {i} dogs", "chosen": f"img/chosen{i}.png", "rejected": f"img/rejected{i}.png"}
        lines.append(json.dumps(row if label is None else {**row, "label": label}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "pairs.jsonl")
