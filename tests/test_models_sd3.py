"""SD3Policy against diffusers' own StableDiffusion3Pipeline, on a tiny SD3.5 layout (two CLIPs, T5, VAE)."""

import pytest
import torch
from tiny_models import DYNAMIC, pipeline_sigmas, save_tiny_sd3

from flowrl.core.seeds import eval_noise_seeds
from flowrl.image.generate import generate
from flowrl.image.models import SD3Policy, load_policy


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory) -> str:
    return save_tiny_sd3(str(tmp_path_factory.mktemp("sd3")))


@pytest.mark.parametrize("cfg_scale", [1.0, 4.5])
def test_generation_matches_sd3_pipeline(sd3_dir, cfg_scale):
    from diffusers import StableDiffusion3Pipeline

    policy = load_policy(sd3_dir)
    assert isinstance(policy, SD3Policy) and policy.latent_shape(32) == (4, 16, 16)
    policy.cfg_scale = cfg_scale
    prompts, seeds = ["a red circle", "two blue squares left of a cat"], [3, 4]
    ours = generate(policy, prompts, seeds, resolution=32, num_steps=4)
    theirs = StableDiffusion3Pipeline.from_pretrained(sd3_dir)(
        prompts,
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=cfg_scale,
        latents=policy.initial_noise(eval_noise_seeds(prompts, seeds), 32),  # each pair's own evaluation noise
        output_type="pt",
    ).images
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-4)


def test_t5_sequence_length_follows_the_pipeline(sd3_dir):
    policy = SD3Policy(sd3_dir)
    assert policy.encode(["a cat"]).embeds.shape == (1, 77 + 256, 64)  # CLIP tokens, then T5's 256
    assert SD3Policy(sd3_dir, max_sequence_length=32).encode(["a cat"]).embeds.shape == (1, 77 + 32, 64)


@pytest.mark.parametrize("dynamic", [False, True])
def test_schedule_is_what_the_pipeline_sets(sd3_dir, dynamic):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    config = DYNAMIC if dynamic else {"shift": 2.0}
    policy = SD3Policy(sd3_dir)
    policy.scheduler = FlowMatchEulerDiscreteScheduler(**config)
    ours = policy.sigmas(4, 32)
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_dir)
    call = {"prompt": "a cat", "height": 32, "width": 32, "num_inference_steps": 4, "guidance_scale": 1.0}
    theirs = pipeline_sigmas(pipe, FlowMatchEulerDiscreteScheduler(**config), **call)
    assert torch.equal(ours.float(), theirs)
    if not dynamic:
        # SD3's pipeline passes no grid: the scheduler spaces its shifted training range [σ_min, 1] evenly
        # (σ_min = 2·0.001 / 1.001) and shifts again, so the last level is not 0.4 as on the linspace(1, 1/T, T) grid
        low = 0.002 / 1.001
        unshifted = [1 - k * (1 - low) / 3 for k in range(4)]
        expected = [2 * s / (1 + s) for s in unshifted] + [0.0]
        assert ours.tolist() == pytest.approx(expected, abs=1e-6)
        assert [round(v, 3) for v in ours.tolist()] == [
            1.0,
            0.8,
            0.501,
            0.004,
            0.0,
        ]  # what issue 30 saw on Qwen-Image and FLUX.2
