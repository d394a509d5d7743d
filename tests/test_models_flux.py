"""FluxPolicy against diffusers' own FluxPipeline, on a tiny FLUX saved and loaded from disk."""

import pytest
import torch
from devices import velocity_on_cpu
from tiny_models import GRID_SHIFT_2, pipeline_sigmas, save_tiny_flux

from flowrl.core.seeds import eval_noise_seeds
from flowrl.image.generate import generate
from flowrl.image.models import FluxPolicy
from flowrl.image.models.flux import image_ids, pack, unpack


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> str:
    return save_tiny_flux(str(tmp_path_factory.mktemp("flux")))


def test_packing_matches_the_pipeline_and_round_trips():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    packed = pack(x)
    assert packed.shape == (2, 12, 16)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 4, 6, 8))
    assert torch.equal(unpack(packed, 6, 8), x)
    assert torch.equal(image_ids(6, 8), FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32))


def test_generation_matches_flux_pipeline(flux_dir):
    from diffusers import FluxPipeline

    policy = FluxPolicy(flux_dir, max_sequence_length=32)
    prompts, seeds = ["a red circle", "two blue squares"], [3, 4]
    ours = generate(policy, prompts, seeds, resolution=32, num_steps=4)

    pipe = FluxPipeline.from_pretrained(flux_dir)
    noise = policy.initial_noise(eval_noise_seeds(prompts, seeds), 32)
    theirs = pipe(
        prompts,
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=3.5,
        latents=pack(noise),
        max_sequence_length=32,
        output_type="pt",
    ).images
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-4)
    # the guidance embedding is live: another scale changes the velocity
    cond = policy.encode(prompts).as_dict()
    v = policy.velocity(noise, torch.full((2,), 0.7), cond)
    policy.guidance_scale = 1.0
    assert not torch.allclose(v, policy.velocity(noise, torch.full((2,), 0.7), cond))


@pytest.mark.parametrize("dynamic", [False, True])
def test_schedule_is_what_the_pipeline_sets(flux_dir, dynamic):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    policy = FluxPolicy(flux_dir, max_sequence_length=32)
    config = dict(policy.scheduler.config) if dynamic else {"shift": 2.0}  # the folder's own shifts dynamically
    policy.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    ours = policy.sigmas(4, 32)
    pipe = FluxPipeline.from_pretrained(flux_dir)
    call = {"prompt": "a cat", "height": 32, "width": 32, "num_inference_steps": 4, "max_sequence_length": 32}
    theirs = pipeline_sigmas(pipe, FlowMatchEulerDiscreteScheduler.from_config(config), **call)
    assert torch.equal(ours.float(), theirs)
    if not dynamic:  # the pipeline's linspace(1, 1/T, T), shifted by the fixed shift
        assert ours.tolist() == pytest.approx(GRID_SHIFT_2, abs=1e-7)


def test_pixel_space_flux_and_true_cfg(tmp_path):
    policy = FluxPolicy(save_tiny_flux(str(tmp_path / "px"), vae=False, guidance_embeds=False))
    assert policy.latent_shape(16) == (3, 16, 16)
    x = policy.initial_noise([0], 16)
    torch.testing.assert_close(policy.decode(x), (x * 0.5 + 0.5).clamp(0, 1))
    with pytest.raises(ValueError, match="multiple of 2"):
        policy.latent_shape(15)
    policy.cfg_scale = 2.0
    cond = policy.encode(["a red circle"]).as_dict()
    sigma = torch.full((1,), 0.5)
    v = policy.velocity(x, sigma, cond)
    policy.cfg_scale = 1.0
    text = policy.velocity(x, sigma, cond)
    uncond = policy.velocity(x, sigma, {"embeds": cond["neg_embeds"], "pooled": cond["neg_pooled"]})
    torch.testing.assert_close(v, uncond + 2.0 * (text - uncond))


def test_missing_component_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no transformer/ folder"):
        FluxPolicy(str(tmp_path))


def test_load_policy_picks_the_adapter_from_model_index(flux_dir, tmp_path):
    import json

    from flowrl.image.models import SD3Policy, load_policy, policy_class

    assert policy_class(flux_dir) is FluxPolicy
    assert policy_class("assets/toy-sd3") is SD3Policy
    assert isinstance(load_policy(flux_dir, max_sequence_length=32), FluxPolicy)
    with pytest.raises(FileNotFoundError, match=r"has no model_index\.json"):
        policy_class(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(
        ValueError,
        match="StableDiffusionXLPipeline pipeline; supported: Flux2KleinPipeline, FluxKontextPipeline, FluxPipeline, "
        "QwenImageEditPipeline, QwenImageEditPlusPipeline, QwenImagePipeline",
    ):
        policy_class(str(tmp_path))


def test_trainer_fine_tunes_flux_and_its_lora_loads_into_flux_pipeline(flux_dir, tmp_path):
    from diffusers import FluxPipeline

    from flowrl.image.run import save_checkpoint
    from flowrl.image.trainer import setup, train_step
    from flowrl.recipes import load_config

    cfg = load_config(
        None,
        [
            f"model.path={flux_dir}", "model.lora_rank=4", "model.lora_alpha=8", "model.guidance_scale=2.0",
            "sampler.num_steps=3", "train.prompts_per_step=2", "train.group_size=4", "train.lr=1e-2",
            "loss.clip_low=0.2", "loss.clip_high=0.2", "output.progress=false",
            "rewards=[{name: toy-geneval}, {name: jpeg-compressibility, weight: 0.1}]",
        ],
    )  # fmt: skip
    run = setup(cfg)
    assert isinstance(run.policy, FluxPolicy) and run.policy.guidance_scale == 2.0
    before = [p.detach().clone() for p in run.params]
    for _ in range(2):
        m = train_step(run)
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values()) and m["train/rows"] == 2 * 4 * 3
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, run.params, strict=True))
    save_checkpoint(run, str(tmp_path / "ckpt"))

    pipe = FluxPipeline.from_pretrained(flux_dir)
    pipe.load_lora_weights(str(tmp_path / "ckpt" / "lora"))
    fresh = FluxPolicy(flux_dir)
    fresh.transformer, fresh.guidance_scale = pipe.transformer, 2.0
    x, sigma = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0.6])
    cond = fresh.encode(["two red circles"]).as_dict()
    with torch.no_grad():
        v_loaded, v_trained = fresh.velocity(x, sigma, cond), velocity_on_cpu(run.policy, x, sigma, cond)
        v_base = FluxPolicy(flux_dir, guidance_scale=2.0).velocity(x, sigma, cond)
    torch.testing.assert_close(v_loaded, v_trained, atol=1e-5, rtol=1e-5)
    assert (v_loaded - v_base).abs().max() > 1e-4
