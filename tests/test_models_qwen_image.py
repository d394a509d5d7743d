"""Qwen-Image through ``QwenImagePolicy`` on a tiny random model of the same architecture, saved as
``QwenImagePipeline.save_pretrained`` writes it and loaded back as a user's checkpoint would be: ODE generation
equals the diffusers pipeline's (with and without true CFG), the schedule and encoding follow the pipeline, and a
trained LoRA loads into the pipeline."""

from __future__ import annotations

import pytest
import torch
from devices import velocity_on_cpu
from tiny_models import GRID_SHIFT_2, pipeline_sigmas, save_tiny_qwen_image

from flowrl.image.models import QwenImagePolicy, load_policy, policy_class
from flowrl.image.models.flux import pack
from flowrl.samplers import ode_solve

PROMPTS = ["a red circle", "two blue squares left of a yellow triangle"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> str:
    return save_tiny_qwen_image(str(tmp_path_factory.mktemp("qwen") / "qwen-image"))


@pytest.fixture(scope="module")
def pipe(qwen_dir):
    from diffusers import QwenImagePipeline

    return QwenImagePipeline.from_pretrained(qwen_dir)


def test_load_policy_picks_qwen_image(qwen_dir):
    assert policy_class(qwen_dir) is QwenImagePolicy
    policy = load_policy(qwen_dir)
    assert policy.latent_shape(32) == (4, 8, 8)  # tiny VAE: 4× per side; 2×2 packing needs multiples of 8 px
    with pytest.raises(ValueError, match="multiple of 8"):
        policy.latent_shape(36)


def test_encoding_is_the_pipelines(qwen_dir, pipe):
    policy = QwenImagePolicy(qwen_dir)
    cond = policy.encode(PROMPTS)
    embeds, mask = pipe.encode_prompt(PROMPTS, device="cpu")
    torch.testing.assert_close(cond.embeds, embeds)
    assert torch.equal(cond.mask, mask.bool()) and not bool(cond.mask.all())  # different lengths: padded, masked
    one = policy.encode(PROMPTS[:1])
    ref, ref_mask = pipe.encode_prompt(PROMPTS[:1], device="cpu")
    assert ref_mask is None and bool(one.mask.all())  # the pipeline drops an all-true mask; the adapter drops it
    torch.testing.assert_close(one.embeds, ref)  # at the transformer


@pytest.mark.parametrize("dynamic", [False, True])
def test_schedule_is_what_the_pipeline_sets(qwen_dir, dynamic):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    policy = QwenImagePolicy(qwen_dir)
    # the folder's own: Qwen-Image's dynamic shift with its exponential time shift and terminal stretch to 0.02
    config = dict(policy.scheduler.config) if dynamic else {"shift": 2.0}
    policy.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    ours = policy.sigmas(4, 32)
    pipe = QwenImagePipeline.from_pretrained(qwen_dir)  # its own: the shared fixture's scheduler stays as it is
    call = {"prompt": "a cat", "height": 32, "width": 32, "num_inference_steps": 4}
    theirs = pipeline_sigmas(pipe, FlowMatchEulerDiscreteScheduler.from_config(config), **call)
    assert torch.equal(ours.float(), theirs)
    if dynamic:
        assert ours[-2].item() == pytest.approx(0.02)  # shift_terminal: the last level before 0
    else:  # the pipeline's linspace(1, 1/T, T), shifted by the fixed shift (issue 30: not 1, .80, .50, .004, 0)
        assert ours.tolist() == pytest.approx(GRID_SHIFT_2, abs=1e-7)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_ode_generation_equals_the_pipeline(qwen_dir, pipe, cfg_scale):
    policy = QwenImagePolicy(qwen_dir)
    policy.cfg_scale, policy.negative_prompt = cfg_scale, " "
    x = policy.initial_noise([3, 4], 32)
    cond = policy.encode(PROMPTS).as_dict()
    ours, _ = ode_solve("euler", policy.velocity, x, policy.sigmas(4, 32), cond)
    options = {"negative_prompt": " ", "true_cfg_scale": cfg_scale} if cfg_scale > 1 else {}
    theirs = pipe(
        prompt=PROMPTS, latents=pack(x), num_inference_steps=4, height=32, width=32, output_type="latent", **options
    ).images
    torch.testing.assert_close(pack(ours), theirs, atol=2e-5, rtol=1e-5)
    images = pipe(
        prompt=PROMPTS, latents=pack(x), num_inference_steps=4, height=32, width=32, output_type="pt", **options
    ).images
    torch.testing.assert_close(policy.decode(ours), images, atol=1e-4, rtol=0)


def test_trained_lora_loads_into_the_pipeline(qwen_dir, tmp_path):
    from diffusers import QwenImagePipeline
    from tiny_runs import tiny_config

    from flowrl.image.run import save_checkpoint
    from flowrl.image.trainer import setup, train_step

    run = setup(tiny_config(qwen_dir, "model.lora_alpha=8"))  # scale 2: the saved LoRA must carry its alpha
    train_step(run)
    save_checkpoint(run, str(tmp_path / "ckpt"))
    loaded = QwenImagePipeline.from_pretrained(qwen_dir)
    loaded.load_lora_weights(str(tmp_path / "ckpt" / "lora"))
    fresh = QwenImagePolicy(qwen_dir)
    fresh.transformer = loaded.transformer
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.6])
    cond = fresh.encode(PROMPTS[:1]).as_dict()
    with torch.no_grad():
        v_loaded, v_trained = fresh.velocity(x, sigma, cond), velocity_on_cpu(run.policy, x, sigma, cond)
        v_base = QwenImagePolicy(qwen_dir).velocity(x, sigma, cond)
    torch.testing.assert_close(v_loaded, v_trained, atol=1e-5, rtol=1e-5)
    assert (v_loaded - v_base).abs().max() > 1e-4


def test_every_family_is_one_registered_flow_model():
    from flowrl.image.models import FAMILIES, FlowModel

    assert FAMILIES.names() == sorted(
        [
            "StableDiffusion3Pipeline",
            "FluxPipeline",
            "QwenImagePipeline",
            "Flux2KleinPipeline",
            "ZImagePipeline",
            "FluxKontextPipeline",
            "QwenImageEditPipeline",
            "QwenImageEditPlusPipeline",
            "WanPipeline",
            "WanImageToVideoPipeline",
        ]
    )
    for name in FAMILIES.names():
        cls = FAMILIES.get(name)
        assert issubclass(cls, FlowModel) and cls.pipeline_class == name  # its LoRA is saved in its own format
        assert FAMILIES.facts(name).lora_targets  # a default for model.lora_targets: []
