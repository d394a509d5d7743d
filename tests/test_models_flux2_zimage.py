"""FLUX.2 [klein] and Z-Image through their adapters on tiny random models of the same architectures, saved as
their pipelines' ``save_pretrained`` writes them and loaded back as a user's checkpoint would be: ODE generation
equals the diffusers pipeline's (with and without guidance), and a trained LoRA loads into the pipeline."""

from __future__ import annotations

import pytest
import torch
from devices import velocity_on_cpu
from tiny_models import save_tiny_flux2_klein, save_tiny_z_image

from flowrl.models import Flux2KleinPolicy, ZImagePolicy, load_policy, policy_class
from flowrl.models.flux2 import empirical_mu, unpatchify
from flowrl.samplers import ode_solve

PROMPTS = ["a red circle", "two blue squares left of a yellow triangle"]
FAMILIES = {"flux2": (save_tiny_flux2_klein, Flux2KleinPolicy), "zimage": (save_tiny_z_image, ZImagePolicy)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {name: save(str(root / name)) for name, (save, _) in FAMILIES.items()}


def _pipeline(name: str, path: str):
    from diffusers import Flux2KleinPipeline, ZImagePipeline

    return (Flux2KleinPipeline if name == "flux2" else ZImagePipeline).from_pretrained(path)


def test_load_policy_picks_each_family(folders):
    for name, (_, cls) in FAMILIES.items():
        assert policy_class(folders[name]) is cls and isinstance(load_policy(folders[name]), cls)


def test_flux2_mu_is_the_pipelines():
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    for tokens, steps in ((16, 4), (1024, 28), (4096, 50), (6000, 4)):
        assert empirical_mu(tokens, steps) == pytest.approx(compute_empirical_mu(tokens, steps), rel=1e-12)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_ode_generation_equals_the_pipeline(folders, name, cfg_scale):
    policy = FAMILIES[name][1](folders[name])
    policy.cfg_scale = cfg_scale
    pipe = _pipeline(name, folders[name])
    x = policy.initial_noise([5, 6], 32)
    cond = policy.encode(PROMPTS).as_dict()
    ours, _ = ode_solve("euler", policy.velocity, x, policy.sigmas(4, 32), cond)
    # the pipelines' guidance: FLUX.2 u + s·(c − u) with s = guidance_scale; Z-Image c + s·(c − u), s = scale − 1
    scale = {"flux2": cfg_scale, "zimage": cfg_scale - 1}[name]
    common = {"latents": x, "num_inference_steps": 4, "height": 32, "width": 32, "guidance_scale": scale}
    # a copy per call: ZImagePipeline writes the chat template into the caller's prompt list
    theirs = pipe(prompt=list(PROMPTS), **common, output_type="latent").images
    if name == "flux2":  # its "latent" output is de-normalised and unpatchified
        bn = pipe.vae.bn
        ours_latent = unpatchify(
            ours * torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 1e-4) + bn.running_mean.view(1, -1, 1, 1)
        )
    else:
        ours_latent = ours
    torch.testing.assert_close(ours_latent, theirs, atol=2e-5, rtol=1e-5)
    images = pipe(prompt=list(PROMPTS), **common, output_type="pt").images
    torch.testing.assert_close(policy.decode(ours), images, atol=1e-4, rtol=0)


def test_distilled_flux2_refuses_guidance(tmp_path):
    policy = Flux2KleinPolicy(save_tiny_flux2_klein(str(tmp_path / "distilled"), distilled=True))
    policy.cfg_scale = 2.0
    cond = policy.encode(PROMPTS[:1], with_negative=True).as_dict()
    with pytest.raises(ValueError, match="step-distilled"):
        policy.velocity(policy.initial_noise([0], 32), torch.tensor([0.5]), cond)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_trained_lora_loads_into_the_pipeline(folders, name, tmp_path):
    from tiny_runs import tiny_config

    from flowrl.trainer.flow import setup, train_step
    from flowrl.trainer.run import save_checkpoint

    run = setup(tiny_config(folders[name], "model.lora_alpha=8"))  # scale 2: the saved LoRA must carry its alpha
    train_step(run)
    save_checkpoint(run, str(tmp_path / "ckpt"))
    loaded = _pipeline(name, folders[name])
    loaded.load_lora_weights(str(tmp_path / "ckpt" / "lora"))
    fresh = FAMILIES[name][1](folders[name])
    fresh.transformer = loaded.transformer
    x, sigma = fresh.initial_noise([9], 32), torch.tensor([0.6])
    cond = fresh.encode(PROMPTS[:1]).as_dict()
    with torch.no_grad():
        v_loaded, v_trained = fresh.velocity(x, sigma, cond), velocity_on_cpu(run.policy, x, sigma, cond)
        v_base = FAMILIES[name][1](folders[name]).velocity(x, sigma, cond)
    torch.testing.assert_close(v_loaded, v_trained, atol=1e-5, rtol=1e-5)
    assert (v_loaded - v_base).abs().max() > 1e-4


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gallery_compares_base_and_trained_columns(folders, name, tmp_path):
    import yaml
    from tiny_runs import tiny_config

    from flowrl.cli import main
    from flowrl.config import to_dict
    from flowrl.trainer.flow import setup, train_step
    from flowrl.trainer.run import save_checkpoint

    cfg = tiny_config(folders[name])
    run = setup(cfg)
    train_step(run)
    save_checkpoint(run, str(tmp_path / "ckpt"))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    args = ["gallery", "--config", str(config), "--column", "base=base", "--column", f"trained={tmp_path / 'ckpt'}"]
    args += ["--prompts", "toy:held-out", "--num-prompts", "2", "--seeds", "0", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    gallery = tmp_path / "out" / "gallery"
    assert (gallery / "index.html").is_file() and (gallery / "contact_sheet.png").stat().st_size > 0
    images = sorted(p.name for p in (gallery / "images").iterdir())
    assert len(images) == 2 * 2  # two prompts, two columns
