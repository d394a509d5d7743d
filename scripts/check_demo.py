"""Re-measure a finished main-job run the way a sceptical user would, outside flowrl's sampling path.

    python scripts/check_demo.py RUN_DIR [--draws 8] [--seed 12345]

The base transformer and the run's final one are loaded with diffusers' ``SD3Transformer2DModel.from_pretrained``
(a LoRA checkpoint through diffusers' own LoRA loader), and each samples with diffusers' ``StableDiffusion3Pipeline``
and ``FlowMatchEulerDiscreteScheduler`` (the run's ``eval.num_steps``) from fresh noise for every image: one
``torch.Generator`` stream seeded with ``--seed``, a different tensor for every (prompt, draw), the same tensors for
base and trained (paired). Prompts are encoded here with transformers' CLIP (penultimate states zero-padded to the
transformer's width, pooled projection), checked against flowrl's encoder. Images are scored with the toy
evaluator on the run's held-out prompts; the gain's SE is over prompts. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def clip_embeds(model_dir: str, prompts: list[str], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[P, L, width]`` penultimate CLIP states (zero-padded) and ``[P, D]`` pooled projections; ``L`` is the
    tokenizer's ``model_max_length``, as in diffusers' SD3 pipeline."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    enc = CLIPTextModelWithProjection.from_pretrained(model_dir, subfolder="text_encoder").eval()
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    ids = ids.input_ids
    with torch.no_grad():
        out = enc(ids, output_hidden_states=True)
    hidden = out.hidden_states[-2]
    return torch.nn.functional.pad(hidden, (0, width - hidden.shape[-1])), out.text_embeds


def sample(transformer, model_dir: str, embeds, pooled, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in [0, 1] from diffusers' pipeline (pixel-space toy: the latents are the image)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model_dir, subfolder="scheduler")
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    size = noise.shape[-1]
    with torch.no_grad():
        latents = pipe(
            prompt_embeds=embeds, pooled_prompt_embeds=pooled, latents=noise, height=size, width=size,
            num_inference_steps=steps, guidance_scale=1.0, output_type="latent",
        ).images  # fmt: skip
    return ((latents.float() + 1) / 2).clamp(0, 1)


def main() -> int:
    from diffusers import SD3Transformer2DModel

    from flowrl.core.stats import prompt_mean_se
    from flowrl.image.data import load_prompts
    from flowrl.image.models import SD3Policy
    from flowrl.recipes import load_config
    from flowrl.rewards import make_reward

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--draws", type=int, default=8, help="fresh noise tensors per prompt")
    p.add_argument("--seed", type=int, default=12345)
    a = p.parse_args()
    cfg = load_config(os.path.join(a.run_dir, "config.yaml"))
    base_dir, final = cfg.model.path, os.path.join(a.run_dir, "checkpoints", "final")
    texts = load_prompts(cfg.data.eval_prompts)
    texts = texts[: cfg.eval.num_prompts] if cfg.eval.num_prompts else texts
    base = SD3Transformer2DModel.from_pretrained(base_dir, subfolder="transformer").eval()
    if os.path.isdir(os.path.join(final, "full")):
        trained = SD3Transformer2DModel.from_pretrained(os.path.join(final, "full")).eval()
    else:
        trained = SD3Transformer2DModel.from_pretrained(base_dir, subfolder="transformer").eval()
        trained.load_lora_adapter(os.path.join(final, "lora"), prefix="transformer")
    embeds, pooled = clip_embeds(base_dir, texts, base.config.joint_attention_dim)
    ours = SD3Policy(base_dir).encode(texts[:4])  # the same conditioning as flowrl's encoder
    torch.testing.assert_close(ours.embeds.cpu(), embeds[:4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.pooled.cpu(), pooled[:4], atol=1e-5, rtol=1e-5)

    g = torch.Generator().manual_seed(a.seed)
    size, channels = cfg.model.resolution, base.config.in_channels
    noise = torch.randn(a.draws, len(texts), channels, size, size, generator=g)  # fresh for every image
    reward = make_reward("toy-geneval")
    scores: dict[str, list[torch.Tensor]] = {"base": [], "trained": [], "base_strict": [], "trained_strict": []}
    for d in range(a.draws):
        for name, model in (("base", base), ("trained", trained)):
            images = sample(model, base_dir, embeds, pooled, noise[d], cfg.eval.num_steps)
            s = reward(images, texts)
            scores[name].append(s["score"])
            scores[f"{name}_strict"].append(s["strict"])
    units = texts * a.draws
    flat = {k: torch.cat(v) for k, v in scores.items()}
    out = {"run_dir": a.run_dir, "prompts": len(texts), "draws": a.draws, "noise_seed": a.seed}
    out["base"], out["base_se"] = prompt_mean_se(flat["base"], units)
    out["trained"], out["trained_se"] = prompt_mean_se(flat["trained"], units)
    out["gain"], out["gain_se"] = prompt_mean_se(flat["trained"] - flat["base"], units)
    out["strict_base"], out["strict_trained"] = flat["base_strict"].mean().item(), flat["trained_strict"].mean().item()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
