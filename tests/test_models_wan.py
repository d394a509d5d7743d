"""The Wan video family against ``WanPipeline`` on tiny random models of the real architectures, saved in the
published layout and loaded as a user's checkpoint: the same sigmas and timesteps, the same velocities, the same
videos from the same noise (with and without guidance; Wan 2.2's expert switch), and the same decoded frames."""

from __future__ import annotations

import pytest
import torch
from tiny_video import save_tiny_wan

from flowrl.image.models import WanPolicy, policy_class
from flowrl.samplers import ode_solve

PROMPT, NEGATIVE = "a red cat", "photo"
FRAMES, SIZE, STEPS = 9, 32, 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("wan")
    return {
        "euler": save_tiny_wan(str(root / "euler"), scheduler="euler"),
        "unipc": save_tiny_wan(str(root / "unipc")),
        "experts": save_tiny_wan(str(root / "experts"), experts=True, scheduler="euler"),
    }


def _policy(folder: str, cfg: float = 1.0, **options) -> WanPolicy:
    policy = WanPolicy(folder, num_frames=FRAMES, **options)
    policy.cfg_scale, policy.negative_prompt = cfg, NEGATIVE
    return policy


def _pipeline(folder: str, x: torch.Tensor, **call) -> torch.Tensor:
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folder)
    out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=SIZE, width=SIZE,
               num_inference_steps=STEPS, latents=x.clone(), output_type="latent", **call)  # fmt: skip
    return out.frames


def test_the_folder_is_a_video_family_with_a_time_axis(folders):
    assert policy_class(folders["euler"]) is WanPolicy
    policy = _policy(folders["euler"])
    assert policy.latent_shape(SIZE) == (16, 3, 4, 4)  # (9 − 1) / 4 + 1 latent frames, 32 / 8 cells
    assert policy.latent_shape([SIZE, 2 * SIZE]) == (16, 3, 4, 8)
    assert policy.initial_noise([0, 1], SIZE).shape == (2, 16, 3, 4, 4)


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_ode_generation_equals_the_pipeline(folders, cfg):
    policy = _policy(folders["euler"], cfg)
    x = policy.initial_noise([7], SIZE)
    cond = policy.encode([PROMPT]).as_dict()
    ours, _ = ode_solve("euler", policy.velocity, x, policy.sigmas(STEPS, SIZE), cond)
    theirs = _pipeline(folders["euler"], x, guidance_scale=cfg)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_the_two_experts_switch_at_the_boundary_as_the_pipeline(folders):
    policy = _policy(folders["experts"], 4.0, cfg_scale_2=3.0)
    sigmas = policy.sigmas(STEPS, SIZE)
    assert policy.boundary == 875.0  # boundary_ratio 0.875 of 1000 training timesteps
    ts = policy.timestep(sigmas[:-1])
    assert ts[0] >= 875 > ts[-1]  # both experts serve steps of this schedule
    x = policy.initial_noise([3], SIZE)
    cond = policy.encode([PROMPT]).as_dict()
    ours, _ = ode_solve("euler", policy.velocity, x, sigmas, cond)
    theirs = _pipeline(folders["experts"], x, guidance_scale=4.0, guidance_scale_2=3.0)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
    swapped = _policy(folders["experts"], 4.0, cfg_scale_2=1.0)  # the low-noise expert unguided: another video
    other, _ = ode_solve("euler", swapped.velocity, x, sigmas, cond)
    assert (other - ours).abs().max() > 1e-3


def test_unipc_checkpoints_give_the_pipelines_sigmas_timesteps_and_velocity(folders):
    from diffusers import WanPipeline

    policy = _policy(folders["unipc"], 4.0)
    pipe = WanPipeline.from_pretrained(folders["unipc"])
    seen: list[torch.Tensor] = []
    pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["timestep"]), with_kwargs=True
    )
    captured: list[torch.Tensor] = []
    pipe.transformer.register_forward_hook(lambda m, a, out: captured.append(out[0]))
    x = policy.initial_noise([5], SIZE)
    pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=SIZE, width=SIZE,
         num_inference_steps=STEPS, latents=x.clone(), output_type="latent", guidance_scale=4.0)  # fmt: skip
    sigmas = policy.sigmas(STEPS, SIZE)
    torch.testing.assert_close(sigmas.float(), pipe.scheduler.sigmas.float())
    ours_t = policy.timestep(sigmas[:-1])
    assert ours_t.tolist() == pipe.scheduler.timesteps.float().tolist()  # int64 in UniPC: σ·1000 floored
    assert [float(t[0]) for t in seen[::2]] == ours_t.tolist()
    cond = policy.encode([PROMPT]).as_dict()
    v = policy.velocity(x, sigmas[:1], cond)
    expected = captured[1] + 4.0 * (captured[0] - captured[1])  # its conditional pass first, then the negative
    torch.testing.assert_close(v, expected, atol=2e-5, rtol=1e-4)


def test_decoded_frames_equal_the_pipelines_video(folders):
    from diffusers import WanPipeline

    policy = _policy(folders["euler"])
    z = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    frames = policy.decode(z)
    assert frames.shape == (1, FRAMES, 3, SIZE, SIZE)
    pipe = WanPipeline.from_pretrained(folders["euler"])
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    video = vae.decode(z * std + mean, return_dict=False)[0]
    expected = pipe.video_processor.postprocess_video(video, output_type="pt")  # [B, F, 3, H, W] in [0, 1]
    torch.testing.assert_close(frames, expected, atol=1e-5, rtol=1e-5)
    back = policy.codec.encode(frames, policy.device, policy.dtype)
    assert back.shape == z.shape


@pytest.fixture(scope="module")
def i2v_folders(tmp_path_factory) -> dict[str, str]:
    import numpy as np
    from PIL import Image
    from tiny_video import save_tiny_wan_i2v

    root = tmp_path_factory.mktemp("wan-i2v")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "first.png")
    return {
        "wan21": save_tiny_wan_i2v(str(root / "wan21")),
        "wan22": save_tiny_wan_i2v(str(root / "wan22"), experts=True),
        "image": str(root / "first.png"),
    }


@pytest.mark.parametrize("kind, cfg", [("wan21", 1.0), ("wan21", 4.0), ("wan22", 3.5)])
def test_image_to_video_equals_the_pipeline(i2v_folders, kind, cfg):
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    from flowrl.image.models import WanI2VPolicy

    folder, image = i2v_folders[kind], i2v_folders["image"]
    assert policy_class(folder) is WanI2VPolicy
    policy = WanI2VPolicy(folder, num_frames=FRAMES)
    policy.cfg_scale, policy.negative_prompt, policy.frame_size = cfg, NEGATIVE, SIZE
    cond = policy.condition([PROMPT], [{"image": [image]}]).as_dict()
    assert cond["ref"].shape == (1, 4 + 16, 3, 4, 4)  # the first-frame mask (4 channels), then its latent
    assert ("image_embeds" in cond) == (kind == "wan21")
    x = policy.initial_noise([11], SIZE)
    ours, _ = ode_solve("euler", policy.velocity, x, policy.sigmas(STEPS, SIZE), cond)
    pipe = WanImageToVideoPipeline.from_pretrained(folder)
    theirs = pipe(image=Image.open(image), prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=SIZE,
                  width=SIZE, num_inference_steps=STEPS, latents=x.clone(), output_type="latent",
                  guidance_scale=cfg).frames  # fmt: skip
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
