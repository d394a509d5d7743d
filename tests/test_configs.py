"""The shipped presets, accelerate configs and launch scripts: each preset validates through ``load_config`` (model and
prompt paths pointed at temporary stand-ins) and keeps its published values; window, reward and LoRA settings fit
the code that will consume them; the accelerate files carry what ``accelerate launch`` needs and name FSDP wrap
classes that exist in the installed diffusers; the scripts are executable, parse, and assemble a command whose
overrides validate. Nothing here loads a real model or launches a process group.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flowrl.core.options import to_dict
from flowrl.image.config import window_of
from flowrl.recipes import load_config
from flowrl.rewards import REWARDS
from flowrl.samplers import make_window

REPO = Path(__file__).resolve().parents[1]
ALL_PRESETS = sorted(p for p in (REPO / "configs").glob("*.yaml"))
TEXT_PRESETS = [p for p in ALL_PRESETS if "backend: text" in p.read_text()]
PRESETS = [p for p in ALL_PRESETS if p not in TEXT_PRESETS]  # the flow trainer's
ACCELERATE = {name: REPO / "configs" / "accelerate" / f"{name}.yaml" for name in ("ddp", "fsdp")}
SCRIPTS = {
    "train_sd35_pickscore.sh": "sd35_pickscore.yaml",
    "train_sd35_geneval.sh": "sd35_geneval.yaml",
    "train_flux_hpsv21.sh": "flux_hpsv21.yaml",
    "train_flux_pref_grpo.sh": "flux_pref_grpo.yaml",
    "train_sd35_nft_pickscore.sh": "sd35_nft_pickscore.yaml",
    "train_sd35_dpo_pickscore.sh": "sd35_dpo_pickscore.yaml",
    "train_sd35_refl_pickscore.sh": "sd35_refl_pickscore.yaml",
    "train_flux_dpo_pickscore.sh": "flux_dpo_pickscore.yaml",
    "train_flux_refl_hpsv21.sh": "flux_refl_hpsv21.yaml",
    "train_qwen_image_pickscore.sh": "qwen_image_pickscore.yaml",
    "train_flux2_klein_pickscore.sh": "flux2_klein_pickscore.yaml",
    "train_z_image_turbo_pickscore.sh": "z_image_turbo_pickscore.yaml",
    "train_flux_kontext_grpo.sh": "flux_kontext_grpo.yaml",
    "train_qwen_image_edit_grpo.sh": "qwen_image_edit_grpo.yaml",
    "train_flux2_klein_edit_grpo.sh": "flux2_klein_edit_grpo.yaml",
    "train_wan22_t2v_grpo.sh": "wan22_t2v_grpo.yaml",
    "train_wan21_t2v_grpo.sh": "wan21_t2v_grpo.yaml",
    "train_wan21_i2v_grpo.sh": "wan21_i2v_grpo.yaml",
}
FLUX_BLOCKS = "FluxTransformerBlock,FluxSingleTransformerBlock"
SCRIPT_ENV = ("NUM_GPUS", "ACCELERATE_CONFIG", "JUDGE_URL", "DETECTOR_URL", "REWARD_URL", "FSDP_LAYERS", "PYTHON",
              "ACCELERATE")  # the scripts' own variables  # fmt: skip

# Published values each preset must keep (sources in the YAML comments).
SD35 = {
    "model.path": "stabilityai/stable-diffusion-3.5-medium",
    "model.resolution": 512,
    "model.cfg_scale": 4.5,
    "model.lora_rank": 32,
    "model.lora_alpha": 64.0,
    "sampler.num_steps": 10,
    "sampler.noise_level": 0.7,
    "train.group_size": 24,
    "train.prompts_per_step": 48,  # over all processes, as flow_grpo
    "train.minibatches": 2,
    "train.lr": 3e-4,
    "train.weight_decay": 1e-4,
    "advantage.name": "global-std",
    "advantage.clip_max": 5.0,
    "loss.clip_low": 1e-4,
    "eval.num_steps": 40,
}
FLUX = {
    "model.path": "black-forest-labs/FLUX.1-dev",
    "model.guidance_scale": 3.5,
    "model.cfg_scale": 1.0,
    "model.mixed_precision": "bf16",
    "model.weights_dtype": "bf16",
    "model.gradient_checkpointing": True,
    "loss.clip_low": 1e-4,
    "loss.kl_coef": 0.0,
    "sampler.same_noise": True,
    "sampler.shift": 3.0,
}
EXPECTED = {
    "sd35_pickscore.yaml": {**SD35, "loss.kl_coef": 0.01, "loss.kl_convention": "flow_grpo", "rewards": ["pickscore"]},
    "sd35_geneval.yaml": {**SD35, "loss.kl_coef": 0.04, "loss.kl_convention": "flow_grpo", "rewards": ["geneval"]},
    "sd35_nft_pickscore.yaml": {
        **{
            k: v
            for k, v in SD35.items()
            if not k.startswith("loss.") and k not in ("model.cfg_scale", "train.minibatches")
        },
        "model.cfg_scale": 1.0,
        "sampler.mode": "ode",
        "sampler.tail_solver": "dpm2m",
        "train.minibatches": 1,
        "train.timestep_fraction": 0.99,
        "train.ema_decay": 0.9,
        "loss.name": "nft",
        "loss.nft.beta": 1.0,
        "loss.nft.adv_clip": 5.0,
        "loss.nft.decay_type": 1,
        "loss.velocity_kl_coef": 1e-4,
        "loss.kl_coef": 0.0,
        "rewards": ["pickscore"],
    },
    "sd35_dpo_pickscore.yaml": {
        "model.path": "stabilityai/stable-diffusion-3.5-medium",
        "model.resolution": 512,
        "model.lora_rank": 32,
        "model.cfg_scale": 4.5,
        "sampler.mode": "flow-grpo",
        "sampler.num_steps": 40,
        "sampler.noise_level": 0.7,
        "train.group_size": 24,
        "train.minibatches": 1,
        "loss.name": "dpo",
        "loss.dpo.beta": 100.0,
        "loss.dpo.pairing": "best-worst",
        "loss.dpo.ref_update_step": 0,
        "loss.dpo.renoise": "logit-normal",
        "loss.dpo.renoise_count": 39,
        "loss.dpo.renoise_shift": 3.0,
        "rewards": ["pickscore"],
    },
    "sd35_refl_pickscore.yaml": {
        "model.path": "stabilityai/stable-diffusion-3.5-medium",
        "model.resolution": 512,
        "model.finetune": "full",
        "model.cfg_scale": 1.0,
        "sampler.mode": "ode",
        "sampler.tail_solver": "euler",
        "sampler.num_steps": 40,
        "train.lr": 1e-5,
        "train.weight_decay": 1e-2,
        "loss.name": "refl",
        "loss.refl.window": 10,
        "loss.refl.margin": 2.0,
        "loss.refl.scale": 1e-3,
        "rewards": ["pickscore"],
    },
    "flux_dpo_pickscore.yaml": {
        "model.path": "black-forest-labs/FLUX.1-dev",
        "model.resolution": 512,
        "model.lora_rank": 64,
        "model.lora_alpha": 128.0,
        "model.guidance_scale": 3.5,
        "sampler.mode": "ode",
        "sampler.num_steps": 28,
        "train.group_size": 4,
        "train.lr": 1e-6,
        "loss.name": "dpo",
        "loss.dpo.beta": 2000.0,
        "loss.dpo.ref_update_step": 0,
        "loss.dpo.renoise": "logit-normal",
        "rewards": ["pickscore"],
    },
    "flux_refl_hpsv21.yaml": {
        "model.path": "black-forest-labs/FLUX.1-dev",
        "model.resolution": 720,
        "model.lora_rank": 128,
        "model.guidance_scale": 3.5,
        "sampler.mode": "ode",
        "sampler.tail_solver": "euler",
        "loss.name": "refl",
        "loss.refl.margin": 2.0,
        "loss.refl.scale": 1e-3,
        "rewards": ["hpsv2"],
    },
    "qwen_image_pickscore.yaml": {
        "model.path": "Qwen/Qwen-Image-2512",
        "model.resolution": 512,
        "model.lora_rank": 64,
        "model.lora_alpha": 128.0,
        "model.cfg_scale": 4.0,
        "sampler.num_steps": 10,
        "sampler.noise_level": 1.0,
        "window": ("random", 1),
        "train.group_size": 16,
        "train.prompts_per_step": 48,
        "train.lr": 3e-4,
        "advantage.name": "gdpo",
        "loss.clip_low": 1e-4,
        "rewards": ["clipscore", "pickscore"],
    },
    "flux2_klein_pickscore.yaml": {
        "model.path": "black-forest-labs/FLUX.2-klein-base-9B",
        "model.resolution": 384,
        "model.cfg_scale": 4.0,
        "sampler.num_steps": 8,
        "window": ("random", 1),
        "train.group_size": 16,
        "train.lr": 3e-4,
        "rewards": ["pickscore"],
    },
    "z_image_turbo_pickscore.yaml": {
        "model.path": "Tongyi-MAI/Z-Image-Turbo",
        "model.resolution": 512,
        "model.cfg_scale": 1.0,
        "sampler.num_steps": 6,
        "window": ("random", 1),
        "train.group_size": 16,
        "train.lr": 3e-4,
        "rewards": ["pickscore"],
    },
    "flux_hpsv21.yaml": {
        **FLUX,
        "model.resolution": 720,
        "sampler.mode": "mixgrpo",
        "sampler.num_steps": 25,
        "sampler.noise_level": 0.7,
        "window": ("progressive", 4),
        "train.group_size": 12,
        "rewards": ["hpsv2"],
    },
    "flux_pref_grpo.yaml": {
        **FLUX,
        "model.resolution": 720,
        "model.lora_rank": 64,
        "model.lora_alpha": 128.0,
        "sampler.num_steps": 25,
        "window": ("fixed", 24),
        "train.group_size": 8,
        "train.lr": 1e-5,
        "train.timestep_fraction": 0.6,
        "advantage.name": "gdpo",
        "loss.name": "grpo-guard",
        "rewards": ["vlm-judge", "clipscore"],
    },
    "flux2_klein_edit_grpo.yaml": {  # Pref-GRPO's klein edit run (lora_ur_edit_prefgrpo_flux2_klein_edit.sh)
        "model.path": "black-forest-labs/FLUX.2-klein-base-9B",
        "model.resolution": 512,
        "model.lora_rank": 64,
        "model.lora_alpha": 128.0,
        "model.cfg_scale": 4.0,
        "model.max_sequence_length": 512,
        "model.gradient_checkpointing": True,
        "sampler.num_steps": 15,
        "sampler.noise_level": 0.7,
        "sampler.shift": 3.0,
        "sampler.same_noise": True,
        "window": ("fixed", 14),
        "train.group_size": 9,
        "train.minibatches": 3,
        "train.lr": 3e-5,
        "train.weight_decay": 1e-4,
        "train.timestep_fraction": 0.6,
        "advantage.name": "gdpo",
        "advantage.clip_max": 5.0,
        "loss.name": "grpo-guard",
        "loss.clip_low": 1e-4,
        "loss.kl_coef": 0.0,
        "eval.num_steps": 15,
        "rewards": ["vlm-edit-judge"],
    },
    "wan22_t2v_grpo.yaml": {  # Flow-Factory examples/grpo/lora/wan22/t2v.yaml
        "model.path": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        "model.resolution": 480,
        "model.frames": 5,
        "model.lora_rank": 64,
        "model.lora_alpha": 128.0,
        "model.train_experts": "both",
        "model.cfg_scale": 4.0,
        "model.cfg_scale_2": 3.0,
        "sampler.num_steps": 10,
        "sampler.noise_level": 0.9,
        "window": ("random", 1),
        "train.group_size": 16,
        "train.prompts_per_step": 48,
        "train.lr": 1e-4,
        "advantage.name": "gdpo",
        "loss.clip_low": 1e-4,
        "loss.kl_coef": 0.0,
        "rewards": ["per-frame"],
    },
    "wan21_t2v_grpo.yaml": {  # flow_grpo config/grpo.py general_ocr_wan2_1
        "model.path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "model.resolution": [240, 416],
        "model.frames": 33,
        "model.lora_rank": 32,
        "model.lora_alpha": 64.0,
        "model.cfg_scale": 4.5,
        "sampler.num_steps": 20,
        "window": ("fixed", 19),
        "train.group_size": 4,
        "train.lr": 1e-4,
        "loss.clip_low": 1e-3,
        "loss.kl_coef": 0.004,
        "rewards": ["per-frame"],
    },
    "wan21_i2v_grpo.yaml": {  # Flow-Factory examples/grpo/lora/wan21/i2v.yaml
        "model.path": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        "model.resolution": 240,
        "model.frames": 5,
        "model.cfg_scale": 5.0,
        "sampler.num_steps": 10,
        "train.group_size": 16,
        "rewards": ["per-frame"],
    },
}


@pytest.fixture
def stand_ins(tmp_path: Path) -> list[str]:
    """Overrides pointing ``model.path`` at an empty folder and both prompt sources at a small file of prompt rows
    with a reference image each (what an editing preset's family and rewards read; the others ignore it)."""
    from PIL import Image

    model = tmp_path / "model"
    model.mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "ref.png")
    prompts = tmp_path / "prompts.jsonl"
    columns = '"image": "ref.png", "target": "a red square", "edit": "add"'  # an editing preset's family and reward
    rows = [f'{{"prompt": "{p}", {columns}}}' for p in ("a red cube", "a cat on a sofa")]
    prompts.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return [f"model.path={model}", f"data.train_prompts={prompts}", f"data.eval_prompts={prompts}"]


def value(cfg, dotted: str):
    """The value of a dotted key as a config file spells it (a method's own options under its name)."""
    node = to_dict(cfg)
    for part in dotted.split("."):
        node = node[part]
    return node


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_every_named_preset_exists():
    names = {p.name for p in PRESETS}
    assert set(EXPECTED) <= names
    assert set(SCRIPTS.values()) <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_validates(path: Path, stand_ins: list[str]):
    cfg = load_config(str(path), stand_ins)
    for key, expected in EXPECTED.get(path.name, {}).items():
        if key == "model.path":
            assert raw(path)["model"]["path"] == expected
        elif key == "rewards":
            assert [r.name for r in cfg.rewards] == expected
        elif key == "window":
            assert window_of(cfg.sampler) == expected
        elif isinstance(expected, float):
            assert value(cfg, key) == pytest.approx(expected), key
        else:
            assert value(cfg, key) == expected, key


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_kl_means_what_its_source_meant(path: Path, stand_ins: list[str]):
    """On one hand-computed SDE step, a preset's β·KL is its source's: flow_grpo (SD3.5 presets) divides
    mean((μ − μ_ref)²) by 2·std_dev_t², std_dev_t = a·√(σ / (1 − σ)) without √|dt| (train_sd3.py); the others
    train without KL (their sources' β is 0)."""
    import math
    from dataclasses import replace

    import torch

    from flowrl.core.losses import LossInputs, compute_loss

    cfg = load_config(str(path), stand_ins)
    if cfg.loss.kl_coef == 0:
        assert re.search(r"^\s*kl_coef: 0\.0\b", path.read_text(), re.M) or not re.search(
            r"^\s*kl_coef:", path.read_text(), re.M
        )
        return
    sigma, sigma_next, a = 0.8, 0.7, cfg.sampler.noise_level
    std_dev_t = a * math.sqrt(sigma / (1 - sigma))
    s = std_dev_t * math.sqrt(sigma - sigma_next)  # flowrl's step std
    mean, ref = torch.tensor([[[0.3, -0.1]]]), torch.tensor([[[0.1, 0.2]]])  # [N=1, T=1, 2 dims]
    published = ((0.3 - 0.1) ** 2 + (-0.1 - 0.2) ** 2) / 2 / (2 * std_dev_t**2)
    lp = torch.zeros(1, 1)
    inputs = LossInputs(
        log_prob=lp, old_log_prob=lp, advantages=torch.zeros(1), mask=torch.ones(1, 1, dtype=torch.bool), mean=mean,
        ref_mean=ref, std=torch.full((1, 1), s), dt=torch.full((1, 1), sigma_next - sigma), x_next=mean.clone(),
        old_mean=mean.clone(),
    )  # fmt: skip
    out = compute_loss(cfg.loss.name, inputs, cfg.loss)
    assert out.metrics["kl"] == pytest.approx(published, rel=1e-6)
    assert out.loss.item() == pytest.approx(cfg.loss.kl_coef * published, rel=1e-6)  # zero advantages: β·KL only
    full_variance = compute_loss(cfg.loss.name, inputs, replace(cfg.loss, kl_convention="step-variance"))
    assert full_variance.metrics["kl"] == pytest.approx(published / (sigma - sigma_next), rel=1e-6)  # 10× here


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hub_ids_validate_as_written(name: str, stand_ins: list[str]):
    """model.path is a hub id in the real-model presets; validation accepts it without touching the network."""
    cfg = load_config(str(REPO / "configs" / name), stand_ins[1:])
    assert cfg.model.path == EXPECTED[name]["model.path"]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_window_and_reward_options_fit_their_consumers(path: Path, stand_ins: list[str]):
    cfg = load_config(str(path), stand_ins)
    kind, size = window_of(cfg.sampler)
    options = dict(cfg.sampler.window_options)
    if kind == "random":
        options.setdefault("seed", cfg.seed)
    make_window(kind, cfg.sampler.num_steps, size, **options)  # raises on an unknown or out-of-range option
    for spec in cfg.rewards:
        inspect.signature(REWARDS.get(spec.name)).bind(**spec.options)  # raises on a misspelt option


@pytest.fixture(scope="module")
def tiny_transformers():
    """Tiny SD3 and FLUX transformers of the real diffusers classes (built from config, nothing loaded)."""
    from diffusers import (
        Flux2Transformer2DModel,
        FluxTransformer2DModel,
        QwenImageTransformer2DModel,
        SD3Transformer2DModel,
        ZImageTransformer2DModel,
    )

    sd3 = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
    )  # fmt: skip
    flux = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    qwen = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    flux2 = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4),
    )  # fmt: skip
    wan = _tiny_wan()
    zimage = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, cap_feat_dim=16, axes_dims=[8, 4, 4], axes_lens=[64, 32, 32],
    )  # fmt: skip
    return {"sd3": sd3, "flux": flux, "qwen": qwen, "flux2": flux2, "zimage": zimage, "wan": wan}


def _tiny_wan():
    """A tiny Wan 2.1 image-to-video transformer: every module name of the text-to-video one, and the image K/V."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36,
                                 out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, image_dim=8,
                                 added_kv_proj_dim=24)  # fmt: skip


#: the family of a preset's model.path (a hub id) and its pipeline class
PATH_FAMILIES = (("qwen-image", "qwen", "QwenImagePipeline"), ("flux.2", "flux2", "Flux2KleinPipeline"),
                 ("z-image", "zimage", "ZImagePipeline"), ("flux", "flux", "FluxPipeline"),
                 ("wan", "wan", "WanPipeline"))  # fmt: skip


def family_of(path: Path) -> tuple[str, str]:
    model = raw(path)["model"]["path"].lower()
    return next(((f, p) for key, f, p in PATH_FAMILIES if key in model), ("sd3", "StableDiffusion3Pipeline"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_lora_targets_exist_in_the_architecture(path: Path, stand_ins: list[str], tiny_transformers):
    from flowrl.core.weights import make_trainable
    from flowrl.image.models import FAMILIES

    cfg = load_config(str(path), stand_ins)
    family, pipeline = family_of(path)
    model = copy.deepcopy(tiny_transformers[family])
    m = cfg.model
    targets = m.lora_targets or list(FAMILIES.facts(pipeline).lora_targets)  # [] = the family's default
    params = make_trainable(model, "lora", m.lora_rank, m.lora_alpha, targets)  # raises on unmatched names
    assert params and all(p.requires_grad for p in params)


@pytest.mark.parametrize("name", sorted(ACCELERATE))
def test_accelerate_configs_load(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    data = raw(ACCELERATE[name])
    for key in ("compute_environment", "distributed_type", "mixed_precision", "num_processes", "num_machines"):
        assert key in data, key
    assert data["mixed_precision"] == "bf16"
    loaded = load_config_from_file(str(ACCELERATE[name]))  # accelerate's own reader: rejects unknown keys
    assert str(loaded.distributed_type).endswith({"ddp": "MULTI_GPU", "fsdp": "FSDP"}[name])


def test_fsdp_file_names_what_flowrl_shards(tiny_transformers, monkeypatch):
    """The values the FSDP file exports (as ``accelerate launch`` does) are ones flowrl's sharding accepts: the
    SD3 block class by default, FLUX's two classes as the FLUX launchers pass them."""
    from flowrl.core.sharding import _blocks, _refuse_unsupported_launch_options, _reshard_after_forward

    fsdp = raw(ACCELERATE["fsdp"])["fsdp_config"]
    assert fsdp["fsdp_version"] == 2
    for key in ("reshard_after_forward", "offload_params", "activation_checkpointing"):
        monkeypatch.setenv(f"FSDP_{key.upper()}", str(fsdp[f"fsdp_{key}"]).lower())
    assert _reshard_after_forward() is True
    _refuse_unsupported_launch_options()
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", fsdp["fsdp_transformer_layer_cls_to_wrap"])
    sd3 = tiny_transformers["sd3"]
    assert _blocks(sd3) == list(sd3.transformer_blocks)
    with pytest.raises(ValueError, match="are not in FluxTransformer2DModel"):
        _blocks(tiny_transformers["flux"])
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", FLUX_BLOCKS)
    flux = tiny_transformers["flux"]
    assert _blocks(flux) == [*flux.transformer_blocks, *flux.single_transformer_blocks]


def test_module_entry_point(monkeypatch, capsys):
    """``python -m flowrl`` (what ``accelerate launch -m flowrl`` runs) is the ``flowrl`` command."""
    monkeypatch.setattr(sys, "argv", ["flowrl", "train", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("flowrl", run_name="__main__")
    assert info.value.code == 0
    assert "train.prompts_per_step" in capsys.readouterr().out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_is_executable_and_parses(script: str):
    path = REPO / "scripts" / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    assert path.read_text().startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)


def stub(path: Path, body: str) -> Path:
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)
    return path


def recorder(path: Path, record: Path) -> Path:
    """An executable that writes its arguments (NUL-separated) to ``record``."""
    return stub(path, f'printf "%s\\0" "$@" > "{record}"')


def recorded(record: Path) -> list[str]:
    return record.read_bytes().decode().split("\0")[:-1]


def launched(tmp_path: Path, script: str, env: dict[str, str], *extra: str) -> list[str]:
    """The argument list a script hands to ``accelerate`` (a stub records it). The script's config check before
    the launch goes to a python stub that records it too: it must check exactly what is launched."""
    record, checked = tmp_path / "args", tmp_path / "checked"
    check = f'if [[ "$1 $2 $3 $4" == "-m flowrl train --check" ]]; then printf "%s\\0" "$@" > "{checked}"; exit 0; fi'
    python = stub(tmp_path / "python", f'{check}\nexec {sys.executable} "$@"')  # the rewards scripts' python runs
    full = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    full.update({"ACCELERATE": str(recorder(tmp_path / "accelerate", record)), "PYTHON": str(python), **env})
    subprocess.run(["bash", str(REPO / "scripts" / script), *extra], check=True, env=full, capture_output=True)
    args = recorded(record)
    i = args.index("-m")
    assert recorded(checked) == ["-m", "flowrl", "train", "--check", *args[i + 3 :]]
    return args


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_command_validates(script: str, tmp_path: Path, stand_ins: list[str]):
    env = {"JUDGE_URL": "http://127.0.0.1:9/v1", "DETECTOR_URL": "http://127.0.0.1:8199"}
    args = launched(tmp_path, script, env, "train.iterations=3")
    assert args[:5] == ["launch", "--config_file", "configs/accelerate/ddp.yaml", "--num_processes", "8"]
    i = args.index("-m")
    assert args[i : i + 5] == ["-m", "flowrl", "train", "--config", f"configs/{SCRIPTS[script]}"]
    overrides = args[i + 5 :]
    assert overrides[-1] == "train.iterations=3"  # extra key=value pairs pass through, last (they win)
    assert "--fsdp_transformer_layer_cls_to_wrap" not in args
    cfg = load_config(str(REPO / args[i + 4]), overrides + stand_ins)
    assert cfg.train.iterations == 3
    options = {r.name: r.options for r in cfg.rewards}
    for judge in ("vlm-judge", "vlm-edit-judge"):
        if judge in options:
            assert options[judge]["base_url"] == env["JUDGE_URL"]
            assert options[judge]["model"] == "UnifiedReward"
    if "geneval" in options:
        assert options["geneval"]["detector_options"]["url"] == env["DETECTOR_URL"]


def test_geneval_script_remote_reward(tmp_path: Path, stand_ins: list[str]):
    args = launched(tmp_path, "train_sd35_geneval.sh", {"REWARD_URL": "http://127.0.0.1:8101", "NUM_GPUS": "2"})
    assert args[args.index("--num_processes") + 1] == "2"
    i = args.index("-m")
    cfg = load_config(str(REPO / args[i + 4]), args[i + 5 :] + stand_ins)
    assert [(r.name, r.options["url"]) for r in cfg.rewards] == [("remote", "http://127.0.0.1:8101")]


FLUX_SCRIPTS = [name for name, preset in SCRIPTS.items() if preset.startswith("flux_")]


@pytest.mark.parametrize("script", FLUX_SCRIPTS)
def test_flux_scripts_wrap_flux_blocks_under_fsdp(script: str, tmp_path: Path):
    env = {"ACCELERATE_CONFIG": "configs/accelerate/fsdp.yaml", "JUDGE_URL": "http://127.0.0.1:9/v1"}
    args = launched(tmp_path, script, env)
    assert args[args.index("--fsdp_transformer_layer_cls_to_wrap") + 1] == FLUX_BLOCKS
    assert args.index("--fsdp_transformer_layer_cls_to_wrap") < args.index("-m")  # a launcher flag, not ours


def test_preset_rewards_override_is_json(tmp_path: Path):
    """The scripts pass the rewards list as one JSON override; it survives the override parser unchanged."""
    from flowrl.core.presets import parse_override

    rewards = raw(REPO / "configs" / "flux_pref_grpo.yaml")["rewards"]
    key, parsed = parse_override("rewards=" + json.dumps(rewards))
    assert key == "rewards" and parsed == rewards


@pytest.mark.parametrize("preset", TEXT_PRESETS, ids=lambda p: p.name)
def test_text_presets_validate_and_their_lora_targets_exist(preset):
    from transformers import AutoConfig, AutoModelForCausalLM

    from flowrl.text.config import TextConfig

    cfg = load_config(str(preset))
    assert isinstance(cfg, TextConfig)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(REPO / cfg.model.path))
    names = [n for n, _ in model.named_modules()]
    assert all(any(n.endswith(t) for n in names) for t in cfg.model.lora_targets)


def test_no_preset_says_the_batch_statistics_are_per_process():
    """Rewards are gathered before advantages (flowrl.core.share): a preset comment saying otherwise misleads."""
    for preset in ALL_PRESETS:
        assert "each process's own samples" not in preset.read_text(), preset.name


def test_a_bad_override_through_a_launcher_is_one_line_and_exit_2(tmp_path: Path, stand_ins: list[str]):
    """The launcher checks the config in one process before `accelerate launch`: a bad override is one
    `flowrl: config error:` line and exit 2 from the script, and nothing is launched."""
    record = tmp_path / "launched"
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    env.update({"ACCELERATE": str(recorder(tmp_path / "accelerate", record)), "PYTHON": sys.executable})
    out = subprocess.run(["bash", str(REPO / "scripts" / "train_sd35_pickscore.sh"), *stand_ins, "train.grup_size=4"],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        "flowrl: config error: unknown config key train.grup_size; did you mean train.group_size?"
    ]
    assert not record.exists()


def test_train_check_validates_without_training(tmp_path: Path, monkeypatch, capsys):
    from flowrl.cli import main

    monkeypatch.chdir(tmp_path)
    demo = str(REPO / "configs" / "demo.yaml")
    assert main(["train", "--check", "--config", demo, "train.iterations=1"]) == 0
    assert capsys.readouterr().out == f"flowrl: config ok: {demo} with overrides\n"
    assert not list(tmp_path.iterdir())  # no run folder
    assert main(["train", "--check", "--config", demo, "sampler.num_steps=0"]) == 2
    assert capsys.readouterr().err.startswith("flowrl: config error: sampler.num_steps")


def launcher_tree(tmp_path: Path) -> Path:
    """A copy of the project's launcher in a folder of its own (``root/scripts/launch.sh``)."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "launch.sh").write_text((REPO / "scripts" / "launch.sh").read_text())
    return root


BARE_PATH = "/usr/bin:/bin"  # no virtualenv on it


def test_the_launcher_finds_the_projects_venv(tmp_path: Path):
    """Run from a shell with no environment active, the launcher takes accelerate and python from the project's
    .venv (as `make venv` makes it) for the check and the launch."""
    root = launcher_tree(tmp_path)
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    recorder(venv / "python", tmp_path / "checked")
    recorder(venv / "accelerate", tmp_path / "launched")
    env = {"PATH": BARE_PATH, "HOME": str(tmp_path), "NUM_GPUS": "2"}
    subprocess.run(["bash", str(root / "scripts" / "launch.sh"), "configs/demo.yaml", "train.iterations=2"], env=env,
                   check=True, capture_output=True)  # fmt: skip
    assert recorded(tmp_path / "checked") == ["-m", "flowrl", "train", "--check", "--config", "configs/demo.yaml",
                                              "train.iterations=2"]  # fmt: skip
    assert recorded(tmp_path / "launched")[:5] == ["launch", "--config_file", "configs/accelerate/ddp.yaml",
                                                   "--num_processes", "2"]  # fmt: skip


def test_the_launcher_without_accelerate_says_what_to_do(tmp_path: Path):
    import shutil

    if shutil.which("accelerate", path=BARE_PATH):
        pytest.skip(f"accelerate is installed system-wide in {BARE_PATH}")
    root = launcher_tree(tmp_path)
    env = {"PATH": BARE_PATH, "HOME": str(tmp_path)}
    out = subprocess.run(["bash", str(root / "scripts" / "launch.sh"), "configs/demo.yaml"], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"flowrl: launch error: 'accelerate' not found: run `make venv` in {root} (the launchers use its .venv) or "
        "activate the environment flowrl is installed in"
    ]


def test_presets_and_bench_presets_use_the_nested_option_names(stand_ins: list[str], caplog):
    """No preset (nor a bench method's overrides) spells a method's option by its old flat name: loading them logs
    no 'is now' notice (flowrl.core.method_options)."""
    import logging

    from flowrl.image.bench import load_preset

    with caplog.at_level(logging.WARNING, logger="flowrl"):
        for path in PRESETS:
            load_config(str(path), stand_ins)
        for path in TEXT_PRESETS:
            load_config(str(path))
        for path in sorted((REPO / "configs" / "bench").glob("*.yaml")):
            load_preset(str(path))
    assert [r.getMessage() for r in caplog.records if "is now" in r.getMessage()] == []
