"""SD3Policy against diffusers' own StableDiffusion3Pipeline, on a tiny SD3.5 layout (two CLIPs, T5, VAE)."""

import pytest
import torch
from tiny_models import save_tiny_sd3

from flowrl.generate import eval_noise_seeds, generate
from flowrl.models import SD3Policy, load_policy


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
