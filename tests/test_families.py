"""The trainer on tiny SD3.5-, FLUX.1-, Qwen-Image-, FLUX.2 [klein]-, Z-Image-, FLUX.1-Kontext- and
Qwen-Image-Edit(-Plus)-layout pipelines (VAE, text encoders) saved to disk (the editing ones train on prompt rows
with a reference image each): every sampler mode, half-precision frozen weights, gradient checkpointing, the prompt
cache, hub-id paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from devices import on_device
from tiny_models import (
    save_tiny_flux,
    save_tiny_flux2_klein,
    save_tiny_flux_kontext,
    save_tiny_qwen_image,
    save_tiny_qwen_image_edit,
    save_tiny_sd3,
    save_tiny_z_image,
)
from tiny_runs import MODES, PREFERENCE_RUNS, tiny_config, write_edit_rows

from flowrl.core.errors import ConfigError
from flowrl.image.models.common import PromptCache
from flowrl.image.trainer import setup, train_step
from flowrl.recipes import load_config

# tiny pipelines: 32 px images are 4×4 latents of 4 channels (VAE factor 8); 2 prompts × 4 images
BACKEND = ["model.resolution=32", "model.max_sequence_length=16"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("backends")
    return {
        "sd3": save_tiny_sd3(str(root / "sd3")),
        "flux": save_tiny_flux(str(root / "flux")),
        "qwen": save_tiny_qwen_image(str(root / "qwen")),
        "flux2": save_tiny_flux2_klein(str(root / "flux2")),
        "zimage": save_tiny_z_image(str(root / "zimage")),
        "kontext": save_tiny_flux_kontext(str(root / "kontext")),
        "qwen-edit": save_tiny_qwen_image_edit(str(root / "qwen-edit")),
        "qwen-edit-plus": save_tiny_qwen_image_edit(str(root / "qwen-edit-plus"), plus=True),
        "flux2-edit": save_tiny_flux2_klein(str(root / "flux2-edit")),  # the same family, on rows with images
    }


EDITING = ("kontext", "qwen-edit", "qwen-edit-plus", "flux2-edit")  # trained on rows with a reference image each


@pytest.fixture(autouse=True)
def small_references(monkeypatch):
    """The Qwen-Image-Edit families resize references to about 1024² pixels, as their pipelines; here 32²."""
    from flowrl.image.models import QwenImageEditPlusPolicy, QwenImageEditPolicy

    monkeypatch.setattr(QwenImageEditPolicy, "vae_area", 32 * 32)
    monkeypatch.setattr(QwenImageEditPlusPolicy, "condition_area", 32 * 32)


def _edit_rows(folder) -> list[str]:
    """Data overrides of an editing family: prompt rows with a 32×32 reference image each."""
    train, test = write_edit_rows(folder, "train", 0, 2), write_edit_rows(folder, "test", 2, 1)
    return [f"data.train_prompts={train}", f"data.eval_prompts={test}"]


def _run(path: str, *overrides: str):
    data = _edit_rows(Path(path)) if Path(path).name in EDITING else []
    return setup(tiny_config(path, *BACKEND, *data, *overrides))


def _moved(before: list[torch.Tensor], run) -> bool:
    return any(not torch.equal(a, p.detach()) for a, p in zip(before, run.params, strict=True))


@pytest.mark.parametrize("family", ["sd3", "flux", "qwen", "flux2", "zimage", *EDITING])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_sampler_mode_trains_each_family(pipelines, family, mode):
    run = _run(pipelines[family], f"sampler.mode={mode}", *MODES[mode])
    before = [p.detach().clone() for p in run.params]
    for _ in range(2):
        m = train_step(run)
        assert m["train/rows"] > 0
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values()), m
    assert _moved(before, run)


@pytest.mark.parametrize("family", ["sd3", "flux", "qwen", "flux2", "zimage", *EDITING])
@pytest.mark.parametrize("loss", sorted(PREFERENCE_RUNS))
def test_the_preference_losses_train_each_family(pipelines, family, loss):
    run = _run(pipelines[family], *PREFERENCE_RUNS[loss])
    before = [p.detach().clone() for p in run.params]
    for _ in range(2):
        m = train_step(run)
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values()), m
    assert _moved(before, run)


@pytest.mark.parametrize("family", ["sd3", "flux", "qwen", "flux2", "zimage", *EDITING])
def test_bf16_frozen_weights_with_fp32_lora(pipelines, family):
    # on an H100 (torch 2.11) the fused attention kernels' bf16 backward gave this tiny FLUX.1 non-finite gradients
    # in its text-stream LoRA (the trainer skips such updates); PyTorch's math kernel is finite
    gpu_flux = ["model.attention_backend=_native_math"] if torch.cuda.is_available() and family == "flux" else []
    run = _run(pipelines[family], "model.weights_dtype=bf16", *gpu_flux)
    transformer = run.policy.transformer
    frozen = [p for p in transformer.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in run.params)  # the optimizer's weights keep full precision
    before = [p.detach().clone() for p in run.params]
    m = train_step(run)
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values()), m
    assert _moved(before, run)
    # sampler states stay float32 whatever the weights' dtype
    assert run.policy.initial_noise([0], 32).dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_gradients(pipelines):
    grads = []
    for flag in ("false", "true"):
        run = _run(pipelines["sd3"], f"model.gradient_checkpointing={flag}", "model.lora_rank=2")
        torch.manual_seed(0)
        for p in run.params:  # LoRA B starts at zero; give every adapter weight a value so all get gradients
            p.data.normal_(0, 0.05)
        policy = run.policy
        cond = policy.encode(["two red circles", "a blue square"]).as_dict()
        x = on_device(torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)), policy.device)
        policy.transformer.train()
        policy.velocity(x, on_device(torch.tensor([0.9, 0.4]), policy.device), cond).square().mean().backward()
        grads.append([p.grad.clone() for p in run.params])
        assert getattr(policy.transformer, "gradient_checkpointing", False) == (flag == "true")
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_prompt_cache_returns_the_encoders_rows(pipelines):
    run = _run(pipelines["sd3"], "model.prompt_cache=2", "model.cfg_scale=2.0")
    policy = run.policy
    cache = policy.prompt_cache
    assert isinstance(cache, PromptCache)
    first = policy.encode(["a red circle", "two blue squares", "a red circle"])
    assert (cache.misses, cache.hits) == (3, 1)  # two prompts and the empty negative; the repeat is a hit
    again = policy.encode(["two blue squares"])
    policy.prompt_cache = None
    plain = policy.encode(["a red circle", "two blue squares", "a red circle"])
    for key, value in plain.as_dict().items():
        torch.testing.assert_close(first.as_dict()[key], value)
    torch.testing.assert_close(again.embeds[0], plain.embeds[1])
    assert len(cache.rows) == 2  # the least recently used prompt was dropped


def test_model_path_accepts_hub_ids_and_rejects_other_paths(tmp_path, monkeypatch):
    from flowrl.image.models import resolve_model_path

    cfg = load_config(None, ["model.path=stabilityai/stable-diffusion-3.5-medium"])
    assert cfg.model.path == "stabilityai/stable-diffusion-3.5-medium"
    with pytest.raises(ConfigError, match="neither a directory nor a hub id"):
        load_config(None, [f"model.path={tmp_path / 'missing' / 'deeper' / 'x'}"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="could not be fetched from the hub"):
        resolve_model_path("flowrl-test/no-such-model")


def test_dtype_rules_are_checked_before_loading(pipelines):
    with pytest.raises(ConfigError, match=r"FluxPipeline.s activations overflow in fp16"):
        load_config(None, [f"model.path={pipelines['flux']}", "model.weights_dtype=fp16"])
    with pytest.raises(ConfigError, match="weights_dtype must be fp32"):
        load_config(None, [f"model.path={pipelines['sd3']}", "model.finetune=full", "model.weights_dtype=bf16"])


def test_sample_batch_chunks_rollouts_without_changing_them(pipelines):
    from flowrl.image.trainer import sample

    batches = []
    for size in (0, 3):  # 8 images: chunks of 3, 3, 2 rows per forward and per VAE decode
        run = _run(pipelines["sd3"], f"train.sample_batch={size}", "model.cfg_scale=2.0")
        batches.append(sample(run, run.train_prompts[:2]))
    whole, chunked = batches
    torch.testing.assert_close(chunked.rollout.samples, whole.rollout.samples, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked.rewards[:, 0], whole.rewards[:, 0], atol=1e-4, rtol=1e-4)
    # JPEG size (column 1) moves in whole bytes when a pixel rounds the other way: a few bytes in a thousand
    torch.testing.assert_close(chunked.rewards[:, 1], whole.rewards[:, 1], atol=0.01, rtol=0)


def test_attention_backend_is_applied_or_refused_clearly(pipelines):
    import importlib.util

    run = _run(pipelines["flux"], "model.attention_backend=_native_math")
    backends = {getattr(m.processor, "_attention_backend", None) for m in run.policy.transformer.modules()
                if getattr(m, "processor", None) is not None}  # fmt: skip
    assert {str(getattr(b, "value", b)) for b in backends} == {"_native_math"}
    assert all(torch.isfinite(torch.tensor(v)) for v in train_step(run).values())
    # SD3's joint processors call SDPA themselves: a dispatcher backend would be silently ignored, so it is refused
    with pytest.raises(ValueError, match=r"model\.attention_backend='_native_math'.*do not use diffusers"):
        _run(pipelines["sd3"], "model.attention_backend=_native_math")
    with pytest.raises(ValueError, match=r"model\.attention_backend='nonsense'.*must be one of"):
        _run(pipelines["flux"], "model.attention_backend=nonsense")
    if importlib.util.find_spec("xformers") is None:  # optional: never installed by default
        with pytest.raises(ValueError, match=r"model\.attention_backend='xformers'.*xformers"):
            _run(pipelines["flux"], "model.attention_backend=xformers")


@pytest.mark.parametrize("family", ["kontext", "flux2-edit", "qwen-edit"])
def test_reference_size_resizes_every_editing_familys_references(pipelines, family, tmp_path):
    """``model.reference_size``: each reference is resized to about that side² pixels (aspect kept) before its
    encoding, whatever its stored size: twice the side, four times the reference tokens."""
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "ref.png")
    run = _run(pipelines[family], "model.reference_size=64")
    assert run.policy.reference_area == 64 * 64

    def size() -> int:
        return run.policy.condition(["a red circle"], [{"image": [str(tmp_path / "ref.png")]}]).ref.numel()

    larger = size()
    run.policy.reference_area = None  # as the pipeline: the stored 32 px (Qwen-Image-Edit: 32², set above)
    assert larger == 4 * size()


@pytest.mark.parametrize("family", ["kontext", "flux2-edit", "qwen-edit"])
def test_a_prompt_cache_keeps_each_rows_reference_encoding(pipelines, family, tmp_path):
    """With ``model.prompt_cache`` a row's references are read and VAE-encoded once: drawn again (every iteration
    draws the same rows), the kept encoding is used, equal to a fresh one."""
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "ref.png")
    run = _run(pipelines[family], "model.prompt_cache=8")
    encode, calls = run.policy.codec.encode, []
    run.policy.codec.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    rows = [{"image": [str(tmp_path / "ref.png")]}]
    first = run.policy.condition(["a red circle"], rows).ref
    again = run.policy.condition(["a red circle"], rows).ref
    assert len(calls) == 1 and torch.equal(first, again)
    run.policy.prompt_cache = None  # off: encoded each time, the same
    assert torch.equal(run.policy.condition(["a red circle"], rows).ref, first) and len(calls) == 2
