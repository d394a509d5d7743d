"""FLUX.2 [klein] editing (``Flux2KleinPipeline(image=...)``) through Flux2KleinPolicy, against diffusers' pipeline
on a tiny klein saved and loaded from disk: generation from one and two reference images with and without guidance,
the references' tokens (and none: text-to-image unchanged), training on edit rows and the LoRA in the pipeline, and
the rows' image counts checked before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_flux2_klein
from tiny_runs import TINY_ARGS, assert_lora_reproduces_velocity, write_edit_rows

from flowrl.core.errors import ConfigError, DataError
from flowrl.core.seeds import eval_noise_seeds
from flowrl.image import trainer
from flowrl.image.data import check_rows
from flowrl.image.generate import generate
from flowrl.image.models import FAMILIES, Flux2KleinPolicy
from flowrl.image.models.flux2 import MAX_REFERENCES, reference_pixels
from flowrl.recipes import load_config

PROMPTS = ["make it red", "add a blue square"]


@pytest.fixture(scope="module")
def klein_dir(tmp_path_factory) -> str:
    return save_tiny_flux2_klein(str(tmp_path_factory.mktemp("klein")))  # undistilled: it takes guidance


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> list[str]:
    """Two reference images of different sizes, neither a multiple of 4 pixels (the tiny VAE's factor 2 × 2×2
    patches) on every side, so the centre crop is exercised; at least 64 pixels a side, as the pipeline requires."""
    folder = tmp_path_factory.mktemp("refs")
    paths = []
    for k, (width, height) in enumerate([(70, 66), (64, 81)]):
        pixels = np.random.default_rng(k).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"ref{k}.png")
        paths.append(str(folder / f"ref{k}.png"))
    return paths


def _policy(path: str, cfg_scale: float = 1.0) -> Flux2KleinPolicy:
    policy = Flux2KleinPolicy(path, max_sequence_length=32)
    policy.cfg_scale = cfg_scale
    return policy


def test_the_klein_facts_make_references_optional():
    facts = FAMILIES.facts("Flux2KleinPipeline")
    assert facts.inputs == ("image",) and facts.images == (0, MAX_REFERENCES) == (0, 4)


@pytest.mark.parametrize(("cfg_scale", "count"), [(1.0, 1), (3.0, 2)])
def test_generation_from_references_matches_flux2_klein_pipeline(klein_dir, references, cfg_scale, count):
    from diffusers import Flux2KleinPipeline

    policy = _policy(klein_dir, cfg_scale)
    refs, seeds = references[:count], [3, 4]
    ours = generate(policy, PROMPTS, seeds, inputs=[{"image": refs}] * 2, resolution=32, num_steps=4)

    pipe = Flux2KleinPipeline.from_pretrained(klein_dir)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        prompt=PROMPTS,
        image=[Image.open(p) for p in refs],  # the pipeline gives every prompt the same references
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=cfg_scale,
        latents=policy.initial_noise(eval_noise_seeds(PROMPTS, seeds), 32),
        max_sequence_length=32,
        output_type="pt",
    ).images
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-4)


def test_reference_preparation_is_the_pipelines(klein_dir, tmp_path):
    """A reference above 1024² pixels (RGBA, odd sides) is shrunk, cropped and converted as the pipeline does."""
    from diffusers import Flux2KleinPipeline

    pixels = np.random.default_rng(7).integers(0, 256, (1001, 1107, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "big.png")
    pipe = Flux2KleinPipeline.from_pretrained(klein_dir)
    image = Image.open(tmp_path / "big.png")
    image = pipe.image_processor._resize_to_target_area(image, 1024 * 1024)  # the pipeline's step 4, as it runs it
    multiple = pipe.vae_scale_factor * 2
    width, height = image.size[0] // multiple * multiple, image.size[1] // multiple * multiple
    theirs = pipe.image_processor.preprocess(image, height=height, width=width, resize_mode="crop")
    ours = reference_pixels(str(tmp_path / "big.png"), multiple)
    assert ours.shape == theirs.shape and ours.shape[-2:] == (height, width)
    torch.testing.assert_close(ours * 2 - 1, theirs, atol=0, rtol=0)


def test_the_references_change_the_velocity_and_none_is_text_to_image(klein_dir, references):
    policy = _policy(klein_dir, cfg_scale=3.0)
    x, sigma = policy.initial_noise([1, 2], 32), torch.full((2,), 0.7)
    text = policy.velocity(x, sigma, policy.encode(PROMPTS).as_dict())
    for plain in (None, [{}, {}], [{"image": []}, {"image": []}]):  # no references: the text-to-image conditioning
        cond = policy.condition(PROMPTS, plain).as_dict()
        assert set(cond) == {"embeds", "neg_embeds"}
        assert torch.equal(policy.velocity(x, sigma, cond), text)
    one = policy.condition(PROMPTS, [{"image": references[:1]}] * 2).as_dict()
    assert one["ref"].shape == (2, 16 * 17, 16) and one["ref_ids"].shape == (2, 16 * 17, 4)
    assert one["ref_ids"][0, :, 0].unique().tolist() == [10]  # the first reference's time coordinate
    both = policy.condition(PROMPTS, [{"image": references}] * 2).as_dict()
    assert both["ref_ids"][0, :, 0].unique().tolist() == [10, 20]  # 10 + 10·i
    assert both["neg_ref"] is both["ref"] and both["neg_ref_ids"] is both["ref_ids"]  # guidance: the same images
    v_one, v_both = policy.velocity(x, sigma, one), policy.velocity(x, sigma, both)
    assert v_one.shape == x.shape
    assert not torch.allclose(v_one, text) and not torch.allclose(v_one, v_both)
    swapped = policy.condition(PROMPTS, [{"image": references[::-1]}] * 2).as_dict()  # the order is read too
    assert not torch.allclose(policy.velocity(x, sigma, swapped), v_both)
    with pytest.raises(DataError, match=r"every prompt of a batch has reference images"):
        policy.condition(PROMPTS, [{"image": references[:1]}, {}])
    with pytest.raises(DataError, match=r"one token count; got \[272, 320\]"):
        policy.condition(PROMPTS, [{"image": references[:1]}, {"image": references[1:]}])
    with pytest.raises(DataError, match=r"at most 4 reference images per prompt, got 5"):
        policy.condition(PROMPTS[:1], [{"image": references[:1] * 5}])


def test_training_on_edit_rows_and_the_lora_in_the_pipeline(klein_dir, tmp_path):
    from diffusers import Flux2KleinPipeline

    train, held_out = write_edit_rows(tmp_path, "train", 0, 2), write_edit_rows(tmp_path, "test", 2, 1)
    args = [f"model.path={klein_dir}", *TINY_ARGS, "model.resolution=32", "model.max_sequence_length=16",
            "model.cfg_scale=2", f"data.train_prompts={train}", f"data.eval_prompts={held_out}"]  # fmt: skip
    run = trainer.setup(load_config(None, args))
    assert len(run.inputs["a red circle"]["image"]) == 1
    before = [p.detach().clone() for p in run.params]
    for _ in range(2):  # train.iterations=2
        metrics = trainer.train_step(run)
        assert np.isfinite(metrics["train/loss"])
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, run.params, strict=True))
    cond = run.policy.condition(["a red circle"], [run.inputs["a red circle"]]).as_dict()
    assert "ref" in cond and "neg_ref" in cond
    assert_lora_reproduces_velocity(
        run, Flux2KleinPipeline, klein_dir, tmp_path, "a red circle", run.inputs["a red circle"]
    )


def _rows(path, prompts: list[str], images: list) -> str:
    rows = [{"prompt": p} if i is None else {"prompt": p, "image": i} for p, i in zip(prompts, images, strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_edit_rows_are_checked_before_any_model_loads(klein_dir, references, tmp_path):
    args = [f"model.path={klein_dir}", *TINY_ARGS]
    load_config(None, args)  # the toy prompt split has no images: text-to-image, as before
    held_out = _rows(tmp_path / "test.jsonl", ["a green circle"], [references[:1]])
    load_config(None, [*args, f"data.train_prompts={held_out}", f"data.eval_prompts={held_out}"])
    five = _rows(tmp_path / "five.jsonl", ["a red circle", "a red square"], [references[:1], references[:1] * 5])
    with pytest.raises(DataError, match=r"five\.jsonl' line 2 has 5 images; the Flux2KleinPipeline family takes "
                                        r"0 to 4 per prompt"):  # fmt: skip
        load_config(None, [*args, f"data.train_prompts={five}", f"data.eval_prompts={held_out}"])
    mixed = _rows(tmp_path / "mixed.jsonl", ["a red circle", "a red square"], [references[:1], None])
    with pytest.raises(DataError, match=r"mixed\.jsonl' line 2 has no image but other rows have"):
        load_config(None, [*args, f"data.train_prompts={held_out}", f"data.eval_prompts={mixed}"])
    # an editing family that requires its image still refuses prompt data without one (FLUX.1-Kontext's facts)
    cfg = load_config(None, args)
    with pytest.raises(ConfigError, match=r"the FluxKontextPipeline family reads image"):
        check_rows({k: getattr(cfg.data, k) for k in ("train_prompts", "eval_prompts")}, "FluxKontextPipeline",
                   [*cfg.rewards, *cfg.eval.watch_rewards])  # fmt: skip
