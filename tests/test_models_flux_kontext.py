"""FluxKontextPolicy against diffusers' own FluxKontextPipeline, on a tiny FLUX.1-Kontext saved and loaded from disk:
generation from a reference image, the reference's tokens, training on edit rows and the LoRA in the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_flux_kontext
from tiny_runs import TINY_ARGS, assert_lora_reproduces_velocity

from flowrl.core.errors import ConfigError, DataError
from flowrl.core.seeds import eval_noise_seeds
from flowrl.image import trainer
from flowrl.image.generate import generate
from flowrl.image.models import FAMILIES, FluxKontextPolicy, policy_class
from flowrl.image.models.flux import pack
from flowrl.recipes import load_config


@pytest.fixture(scope="module")
def kontext_dir(tmp_path_factory) -> str:
    return save_tiny_flux_kontext(str(tmp_path_factory.mktemp("kontext")))


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> list[str]:
    """Two 32×32 reference images with different content."""
    folder = tmp_path_factory.mktemp("refs")
    paths = []
    for k in range(2):
        pixels = np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"ref{k}.png")
        paths.append(str(folder / f"ref{k}.png"))
    return paths


def test_the_folder_picks_the_editing_family(kontext_dir):
    assert policy_class(kontext_dir) is FluxKontextPolicy
    facts = FAMILIES.facts("FluxKontextPipeline")
    assert facts.inputs == ("image",) and facts.images == (1, 1) and facts.guidance_embedding


def test_generation_from_a_reference_matches_flux_kontext_pipeline(kontext_dir, references):
    from diffusers import FluxKontextPipeline

    policy = FluxKontextPolicy(kontext_dir, max_sequence_length=32)
    prompts, seeds = ["make it red", "add a blue square"], [3, 4]
    inputs = [{"image": [references[0]]}, {"image": [references[1]]}]
    ours = generate(policy, prompts, seeds, inputs=inputs, resolution=32, num_steps=4)

    pipe = FluxKontextPipeline.from_pretrained(kontext_dir)
    noise = policy.initial_noise(eval_noise_seeds(prompts, seeds), 32)
    theirs = pipe(
        prompt=prompts,
        image=[Image.open(p) for p in references],
        height=32,
        width=32,
        max_area=32 * 32,
        _auto_resize=False,
        num_inference_steps=4,
        guidance_scale=3.5,
        latents=pack(noise),
        max_sequence_length=32,
        output_type="pt",
    ).images
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-4)
    # the reference is read: another reference changes the velocity of the same state and prompt
    cond = policy.condition(prompts[:1], inputs[:1]).as_dict()
    other = policy.condition(prompts[:1], inputs[1:]).as_dict()
    sigma = torch.full((1,), 0.7)
    assert not torch.allclose(policy.velocity(noise[:1], sigma, cond), policy.velocity(noise[:1], sigma, other))
    with pytest.raises(DataError, match=r"FLUX\.1-Kontext edits an image"):
        policy.condition(prompts, None)


def _rows(path, prompts: list[str], images: list) -> str:
    path.write_text(
        "".join(json.dumps({"prompt": p, "image": i}) + "\n" for p, i in zip(prompts, images, strict=True))
    )
    return str(path)


def test_training_on_edit_rows_and_the_lora_in_the_pipeline(kontext_dir, references, tmp_path):
    from diffusers import FluxKontextPipeline

    train = _rows(tmp_path / "train.jsonl", ["a red circle", "a red square"], references)
    held_out = _rows(tmp_path / "test.jsonl", ["a green circle"], references[:1])
    args = [f"model.path={kontext_dir}", *TINY_ARGS, f"data.train_prompts={train}", f"data.eval_prompts={held_out}",
            "model.max_sequence_length=32", "train.iterations=1"]  # fmt: skip
    run = trainer.setup(load_config(None, args))
    before = [p.detach().clone() for p in run.params]
    metrics = trainer.train_step(run)
    assert np.isfinite(metrics["train/loss"])
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, run.params, strict=True))
    assert_lora_reproduces_velocity(run, FluxKontextPipeline, kontext_dir, tmp_path, "a red circle",
                                    {"image": [references[0]]})  # fmt: skip


def test_edit_rows_are_checked_before_any_model_loads(kontext_dir, references, tmp_path):
    args = [f"model.path={kontext_dir}", *TINY_ARGS]
    with pytest.raises(ConfigError, match=r"data\.train_prompts: the FluxKontextPipeline family reads image"):
        load_config(None, args)  # the toy prompt split has no images
    held_out = _rows(tmp_path / "test.jsonl", ["a green circle"], references[:1])
    two = _rows(tmp_path / "two.jsonl", ["a red circle"], [references])
    with pytest.raises(DataError, match=r"two\.jsonl' line 1 has 2 images; the FluxKontextPipeline family takes 1"):
        load_config(None, [*args, f"data.train_prompts={two}", f"data.eval_prompts={held_out}"])
    missing = _rows(tmp_path / "missing.jsonl", ["a red circle"], ["nowhere.png"])
    with pytest.raises(DataError, match=r"missing\.jsonl' line 1: image 'nowhere\.png' does not exist"):
        load_config(None, [*args, f"data.train_prompts={missing}", f"data.eval_prompts={held_out}"])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    broken = _rows(tmp_path / "broken.jsonl", ["a red circle"], ["broken.png"])  # relative to the file's folder
    with pytest.raises(DataError, match=r"broken\.jsonl' line 1: image 'broken\.png' cannot be read"):
        load_config(None, [*args, f"data.train_prompts={broken}", f"data.eval_prompts={held_out}"])
