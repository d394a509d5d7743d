"""QwenImageEditPolicy and QwenImageEditPlusPolicy against diffusers' own QwenImageEditPipeline and
QwenImageEditPlusPipeline, on tiny random models of the same architectures saved and loaded from disk: ODE generation
from reference images (with and without true CFG, Plus with two references of different sizes), the references'
effect, training on edit rows through the trainer and the LoRA in the pipeline, and the rows refused at config time.

The pipelines resize every reference to about 1024² pixels (Plus: 384² for the vision-language view); the tests
shrink those areas on both sides (the pipeline modules' constants, the policies' ``vae_area`` / ``condition_area``)
to keep the tiny models fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_qwen_image_edit
from tiny_runs import TINY_ARGS

from flowrl.core.errors import ConfigError, DataError
from flowrl.image import trainer
from flowrl.image.models import FAMILIES, QwenImageEditPlusPolicy, QwenImageEditPolicy, policy_class
from flowrl.image.models.flux import pack
from flowrl.image.run import save_checkpoint
from flowrl.recipes import load_config
from flowrl.samplers import ode_solve

VAE_AREA, CONDITION_AREA = 64 * 64, 32 * 32  # the tests' reference areas (the pipelines': 1024², Plus 384²)
PROMPTS = ["make it red", "add a blue square"]


@pytest.fixture(scope="module")
def edit_dir(tmp_path_factory) -> str:
    return save_tiny_qwen_image_edit(str(tmp_path_factory.mktemp("qwen-edit") / "edit"))


@pytest.fixture(scope="module")
def plus_dir(tmp_path_factory) -> str:
    return save_tiny_qwen_image_edit(str(tmp_path_factory.mktemp("qwen-edit-plus") / "plus"), plus=True)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> list[str]:
    """Two 32×32 references with different content and a 64×32 one (another aspect ratio: 96×32 at the VAE)."""
    folder = tmp_path_factory.mktemp("refs")
    paths = []
    for k, (height, width) in enumerate([(32, 32), (32, 32), (32, 64)]):
        pixels = np.random.default_rng(k).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"ref{k}.png")
        paths.append(str(folder / f"ref{k}.png"))
    return paths


@pytest.fixture
def small_areas(monkeypatch):
    """The pipelines and the policies resize references to the tests' areas."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    dimensions = edit.calculate_dimensions
    monkeypatch.setattr(edit, "calculate_dimensions", lambda area, ratio: dimensions(VAE_AREA, ratio))
    monkeypatch.setattr(plus, "VAE_IMAGE_SIZE", VAE_AREA)
    monkeypatch.setattr(plus, "CONDITION_IMAGE_SIZE", CONDITION_AREA)
    monkeypatch.setattr(QwenImageEditPolicy, "vae_area", VAE_AREA)
    monkeypatch.setattr(QwenImageEditPlusPolicy, "condition_area", CONDITION_AREA)


def test_the_folders_pick_the_editing_families(edit_dir, plus_dir):
    assert policy_class(edit_dir) is QwenImageEditPolicy and policy_class(plus_dir) is QwenImageEditPlusPolicy
    assert FAMILIES.facts("QwenImageEditPipeline").images == (1, 1)
    assert FAMILIES.facts("QwenImageEditPlusPipeline").images == (1, 3)
    assert all(FAMILIES.facts(n).inputs == ("image",) for n in ("QwenImageEditPipeline", "QwenImageEditPlusPipeline"))


def _pipeline_latents(pipe, prompt: str, images: list, noise: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """The pipeline's final packed latents for one prompt (the Plus pipeline takes one prompt per call; the edit
    pipeline is called as it resizes a single image for its vision-language view)."""
    options = {"negative_prompt": " ", "true_cfg_scale": cfg_scale} if cfg_scale > 1 else {"true_cfg_scale": 1.0}
    pipe.set_progress_bar_config(disable=True)
    image = images if len(images) > 1 else images[0]
    return pipe(image=image, prompt=prompt, latents=pack(noise), height=32, width=32, num_inference_steps=4,
                output_type="latent", **options).images  # fmt: skip


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
@pytest.mark.parametrize("plus", [False, True])
def test_ode_generation_equals_the_pipeline(edit_dir, plus_dir, references, small_areas, plus, cfg_scale):
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    folder, cls = (plus_dir, QwenImageEditPlusPolicy) if plus else (edit_dir, QwenImageEditPolicy)
    policy = cls(folder)
    policy.cfg_scale, policy.negative_prompt = cfg_scale, " "
    # Plus: two references of different sizes for the first prompt, one for the second (two layouts, one batch)
    images = [[references[0], references[2]], [references[1]]] if plus else [[references[0]], [references[1]]]
    cond = policy.condition(PROMPTS, [{"image": i} for i in images]).as_dict()
    if plus:
        assert cond["ref_shapes"].tolist() == [[[8, 8], [4, 12]], [[8, 8], [0, 0]]]  # 64² and 32×96 px at the VAE
        assert cond["ref_shapes"].device.type == "cpu"  # read on every forward: on the host, never a device sync
        assert cond["ref"].shape == (2, 64 + 48, 16)
    x = policy.initial_noise([3, 4], 32)
    ours, _ = ode_solve("euler", policy.velocity, x, policy.sigmas(4, 32), cond)
    pipe = (QwenImageEditPlusPipeline if plus else QwenImageEditPipeline).from_pretrained(folder)
    for i, prompt in enumerate(PROMPTS):
        theirs = _pipeline_latents(pipe, prompt, [Image.open(p) for p in images[i]], x[i : i + 1], cfg_scale)
        torch.testing.assert_close(pack(ours[i : i + 1]), theirs, atol=2e-5, rtol=1e-5)
    if cfg_scale == 1.0 and not plus:  # decoded as the pipeline decodes
        image = pipe(image=Image.open(images[0][0]), prompt=PROMPTS[0], latents=pack(x[:1]), height=32, width=32,
                     num_inference_steps=4, true_cfg_scale=1.0, output_type="pt").images  # fmt: skip
        torch.testing.assert_close(policy.decode(ours[:1]), image, atol=1e-4, rtol=0)


def test_the_references_are_read_and_checked(edit_dir, plus_dir, references, small_areas):
    policy = QwenImageEditPolicy(edit_dir)
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((1,), 0.7)
    one = policy.condition(PROMPTS[:1], [{"image": [references[0]]}]).as_dict()
    other = policy.condition(PROMPTS[:1], [{"image": [references[1]]}]).as_dict()
    assert not torch.allclose(one["embeds"], other["embeds"])  # the vision-language encoder sees the image
    assert not torch.allclose(policy.velocity(x, sigma, one), policy.velocity(x, sigma, other))
    with pytest.raises(DataError, match=r"Qwen-Image-Edit edits images"):
        policy.condition(PROMPTS, None)
    with pytest.raises(DataError, match=r"Qwen-Image-Edit takes one reference image per prompt; 'make it red' has 2"):
        policy.condition(PROMPTS[:1], [{"image": references[:2]}])
    with pytest.raises(DataError, match=r"encodes each instruction with its reference image"):
        policy.encode(PROMPTS)
    plus = QwenImageEditPlusPolicy(plus_dir)
    # rows of two reference layouts, interleaved: each layout's rows share a forward, in the rows' order again
    inputs = [{"image": [references[0], references[2]]}, {"image": [references[1]]}, {"image": references[1:]}]
    cond = plus.condition(["a", "b", "c"], inputs).as_dict()
    xs, sigmas = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0.9, 0.6, 0.3])
    rows = [plus.velocity(xs[i : i + 1], sigmas[i : i + 1], {k: v[i : i + 1] for k, v in cond.items()})
            for i in range(3)]  # fmt: skip
    torch.testing.assert_close(plus.velocity(xs, sigmas, cond), torch.cat(rows), atol=1e-5, rtol=1e-5)
    with pytest.raises(DataError, match=r"Qwen-Image-Edit-Plus takes 1 to 3 reference images per prompt"):
        plus.condition(PROMPTS[:1], [{"image": references + references[:1]}])


def test_the_prompt_cache_is_keyed_by_text_and_images(edit_dir, references, small_areas):
    from flowrl.image.models.common import PromptCache

    policy = QwenImageEditPolicy(edit_dir)
    policy.cfg_scale, policy.negative_prompt = 3.0, " "
    inputs = [{"image": [references[0]]}, {"image": [references[1]]}]
    plain = policy.condition(PROMPTS, inputs)
    policy.prompt_cache = PromptCache(8)
    cached = policy.condition(PROMPTS, inputs)
    again = policy.condition(PROMPTS[:1], [{"image": [references[1]]}])  # the same text with another image
    cache = policy.prompt_cache
    # the 2 prompts and the negative with each image, then the first text with the second image (the negative with
    # that image is a hit)
    assert (cache.misses, cache.hits) == (5, 1)
    for key in ("embeds", "mask", "neg_embeds", "neg_mask"):
        torch.testing.assert_close(getattr(cached, key), getattr(plain, key))
    assert not torch.allclose(again.embeds, plain.embeds[:1, : again.embeds.shape[1]])


def _rows(path, rows: list[tuple[str, list[str]]]) -> str:
    path.write_text("".join(json.dumps({"prompt": p, "image": i}) + "\n" for p, i in rows))
    return str(path)


@pytest.mark.parametrize("plus", [False, True])
def test_training_on_edit_rows_and_the_lora_in_the_pipeline(
    edit_dir, plus_dir, references, small_areas, tmp_path, plus
):
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    folder = plus_dir if plus else edit_dir
    first = references[:1] + references[2:] if plus else references[:1]  # Plus: two references, two sizes
    train = _rows(tmp_path / "train.jsonl", [("a red circle", first), ("a red square", references[1:2])])
    held_out = _rows(tmp_path / "test.jsonl", [("a green circle", references[1:2])])
    args = [f"model.path={folder}", *TINY_ARGS, f"data.train_prompts={train}", f"data.eval_prompts={held_out}",
            "model.cfg_scale=2.0", "model.negative_prompt=' '"]  # fmt: skip
    run = trainer.setup(load_config(None, args))
    before = [p.detach().clone() for p in run.params]
    for _ in range(2):
        metrics = trainer.train_step(run)
        assert np.isfinite(metrics["train/loss"]) and metrics["train/rows"] > 0
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, run.params, strict=True))
    save_checkpoint(run, str(tmp_path / "ckpt"))
    pipe = (QwenImageEditPlusPipeline if plus else QwenImageEditPipeline).from_pretrained(folder)
    pipe.load_lora_weights(str(tmp_path / "ckpt" / "lora"), weight_name="pytorch_lora_weights.safetensors")
    x, sigma = torch.randn(1, *run.policy.latent_shape(32)), torch.full((1,), 0.6)
    cond = run.policy.condition(["a red circle"], [{"image": first}]).as_dict()
    with torch.no_grad():
        ours = run.policy.velocity(x, sigma, cond)
        base = type(run.policy)(folder)
        base.cfg_scale, base.negative_prompt = 2.0, " "
        untrained = base.velocity(x, sigma, cond)
        base.transformer = pipe.transformer  # the pipeline's network with the saved LoRA, through our adapter
        torch.testing.assert_close(base.velocity(x, sigma, cond), ours, atol=1e-5, rtol=1e-4)
    assert (ours - untrained).abs().max() > 1e-4


def test_edit_rows_are_checked_before_any_model_loads(edit_dir, plus_dir, references, tmp_path):
    held_out = _rows(tmp_path / "test.jsonl", [("a green circle", references[:1])])
    two = _rows(tmp_path / "two.jsonl", [("a red circle", references[:2])])
    args = [*TINY_ARGS, f"data.train_prompts={two}", f"data.eval_prompts={held_out}"]
    with pytest.raises(DataError, match=r"two\.jsonl' line 1 has 2 images; the QwenImageEditPipeline family takes 1"):
        load_config(None, [f"model.path={edit_dir}", *args])
    load_config(None, [f"model.path={plus_dir}", *args])  # Plus takes two
    four = _rows(tmp_path / "four.jsonl", [("a red circle", references + references[:1])])
    with pytest.raises(DataError, match=r"has 4 images; the QwenImageEditPlusPipeline family takes 1 to 3 per"):
        load_config(None, [f"model.path={plus_dir}", *TINY_ARGS, f"data.train_prompts={four}",
                           f"data.eval_prompts={held_out}"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"the QwenImageEditPipeline family reads image"):
        load_config(None, [f"model.path={edit_dir}", *TINY_ARGS])  # the toy prompt split has no images


def test_the_edit_preset_loads_against_the_family(edit_dir, references, tmp_path):
    rows = _rows(tmp_path / "rows.jsonl", [("a red circle", references[:1]), ("two dogs", references[1:2])])
    preset = str(Path(__file__).resolve().parents[1] / "configs" / "qwen_image_edit_grpo.yaml")
    cfg = load_config(preset, [f"model.path={edit_dir}", f"data.train_prompts={rows}", f"data.eval_prompts={rows}"])
    assert policy_class(cfg.model.path) is QwenImageEditPolicy
    assert cfg.model.cfg_scale == 4.0 and cfg.model.negative_prompt == " "
