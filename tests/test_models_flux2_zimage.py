"""FLUX.2 [klein] and Z-Image through their adapters on tiny random models of the same architectures, saved as
their pipelines' ``save_pretrained`` writes them and loaded back as a user's checkpoint would be: ODE generation
equals the diffusers pipeline's (with and without guidance), and a trained LoRA loads into the pipeline."""

from __future__ import annotations

import pytest
import torch
from devices import velocity_on_cpu
from tiny_models import DYNAMIC, GRID_SHIFT_2, pipeline_sigmas, save_tiny_flux2_klein, save_tiny_z_image

from flowrl.image.models import Flux2KleinPolicy, ZImagePolicy, load_policy, policy_class
from flowrl.image.models.flux2 import empirical_mu, unpatchify
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
@pytest.mark.parametrize("dynamic", [False, True])
def test_schedule_is_what_the_pipeline_sets(folders, name, dynamic):
    from diffusers import FlowMatchEulerDiscreteScheduler

    policy = FAMILIES[name][1](folders[name])
    # FLUX.2's folder shifts dynamically (μ from the pipeline's empirical fit), Z-Image Turbo's by a constant
    own = dict(policy.scheduler.config)
    config = {"shift": 2.0} if not dynamic else own if own["use_dynamic_shifting"] else {**own, **DYNAMIC}
    policy.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    ours = policy.sigmas(4, 32)
    call = {"prompt": "a cat", "height": 32, "width": 32, "num_inference_steps": 4, "guidance_scale": 1.0}
    theirs = pipeline_sigmas(
        _pipeline(name, folders[name]), FlowMatchEulerDiscreteScheduler.from_config(config), **call
    )
    assert torch.equal(ours.float(), theirs)
    if not dynamic:  # the pipelines' linspace(1, 1/T, T), shifted by the fixed shift (issue 30: not 1, .80, .50, .004)
        assert ours.tolist() == pytest.approx(GRID_SHIFT_2, abs=1e-7)


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


@pytest.fixture
def no_weights(monkeypatch):
    """Loading FLUX.2 weights fails the test: what is refused must be refused from the folder's files alone."""
    from diffusers import Flux2Transformer2DModel

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(Flux2Transformer2DModel, "from_pretrained", refuse)


def test_the_klein_preset_on_a_distilled_checkpoint_is_refused_before_loading(tmp_path, capsys, no_weights):
    from flowrl.cli import main
    from flowrl.recipes import load_config

    distilled = save_tiny_flux2_klein(str(tmp_path / "klein-4B"), distilled=True)  # is_distilled: true
    base = save_tiny_flux2_klein(str(tmp_path / "klein-base-4B"))  # no is_distilled, as the published -base
    capsys.readouterr()  # the folders' saving bars
    message = (
        f"flowrl: config error: model.cfg_scale=4: {distilled!r} is a step-distilled FLUX.2 [klein] (is_distilled in "
        "its model_index.json), which samples without guidance; set model.cfg_scale=1 (it is made for 4 steps: "
        "sampler.num_steps=4 eval.num_steps=4), or use an undistilled -base checkpoint\n"
    )
    data = ["data.train_prompts=toy:train", "data.eval_prompts=toy:held-out"]  # the preset's files are not here
    run_dir = tmp_path / "run"
    argv = ["train", "--config", "configs/flux2_klein_pickscore.yaml", f"model.path={distilled}", *data,
            f"output.run_dir={run_dir}"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == message and not run_dir.exists()
    # the settings the refusal names run; the preset's guidance is the -base models'
    cfg = load_config("configs/flux2_klein_pickscore.yaml", [f"model.path={distilled}", *data, "model.cfg_scale=1"])
    assert cfg.model.cfg_scale == 1
    assert load_config("configs/flux2_klein_pickscore.yaml", [f"model.path={base}", *data]).model.cfg_scale == 4


def test_a_cached_hub_checkpoint_is_checked_at_config_time_and_any_before_loading(tmp_path, monkeypatch, no_weights):
    import shutil

    import huggingface_hub

    from flowrl.core.errors import ConfigError
    from flowrl.image.models import policy_for
    from flowrl.recipes import load_config

    # the Hugging Face cache's layout: refs/main names the snapshot folder that holds the files
    repo = tmp_path / "hub" / "models--org--klein-4B"
    save_tiny_flux2_klein(str(repo / "snapshots" / "abc123"), distilled=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=r"model\.cfg_scale=3: '.*abc123' is a step-distilled FLUX\.2 \[klein\]"):
        load_config(None, ["model.path=org/klein-4B", "model.cfg_scale=3"])
    # the loader checks again (a hub id the config could not read has been downloaded by then), before any weight
    local = shutil.copytree(repo / "snapshots" / "abc123", tmp_path / "local")
    model = load_config(None, [f"model.path={local}"]).model
    model.cfg_scale = 2.0  # after the config check, as a caller that builds the section itself
    with pytest.raises(ConfigError, match=r"model\.cfg_scale=2: .* step-distilled"):
        policy_for(model)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_trained_lora_loads_into_the_pipeline(folders, name, tmp_path):
    from tiny_runs import tiny_config

    from flowrl.image.run import save_checkpoint
    from flowrl.image.trainer import setup, train_step

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
    from flowrl.image.config import to_dict
    from flowrl.image.run import save_checkpoint
    from flowrl.image.trainer import setup, train_step

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
