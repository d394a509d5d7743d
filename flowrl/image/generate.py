"""Deterministic image generation and scoring: the evaluation path shared by the trainer, ``flowrl bench``, the
gallery and the pretraining script.

Evaluation noise. Each (prompt, seed index) pair gets its own initial noise, seeded by a hash of the prompt text and
the index (``flowrl.core.seeds.eval_noise_seed``).
So an image depends only on (weights, prompt, seed index, schedule): never on the
batch, the order of the prompt list, how much of it ``eval.num_prompts`` keeps, or how it is dealt out over
processes; and the base and the trained policy see the same noise for the same pair (paired gains). Evaluation seeds
have bit 63 set; training's noise seeds stay below ``2**63`` (``TRAIN_SEED_LIMIT``), so the two streams never meet.
One noise tensor shared by every prompt of a seed index, as before, made a held-out mean rest on a handful of draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from flowrl.core.seeds import eval_noise_seeds
from flowrl.samplers import ode_solve


class ImagePolicy(Protocol):
    """What generation needs from a model adapter (``flowrl.image.models.SD3Policy`` is one)."""

    def condition(self, prompts: list[str], inputs: Sequence[Mapping[str, Any]] | None = None): ...
    def initial_noise(self, seeds: list[int], resolution: int) -> Tensor: ...
    def sigmas(self, num_steps: int, resolution: int) -> Tensor: ...
    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor: ...
    def ode_velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor: ...
    def decode(self, latents: Tensor) -> Tensor: ...


@torch.no_grad()
def generate(policy: ImagePolicy, prompts: list[str], seed_indices: list[int], **options: Any) -> Tensor:
    """ODE-sample one image per (prompt, seed index) pair from that pair's own evaluation noise
    (``eval_noise_seed``); ``options`` are ``generate_from_noise``'s (``resolution`` and ``num_steps`` required).
    Returns ``[B, 3, H, W]`` float32 in [0, 1] on CPU (a video family: frames ``[B, F, 3, H, W]``)."""
    return generate_from_noise(policy, prompts, eval_noise_seeds(prompts, seed_indices), **options)


@torch.no_grad()
def generate_from_noise(
    policy: ImagePolicy,
    prompts: list[str],
    noise_seeds: list[int],
    *,
    inputs: Sequence[Mapping[str, Any]] | None = None,
    resolution: int,
    num_steps: int,
    solver: str = "euler",
    batch_size: int = 64,
) -> Tensor:
    """ODE-sample one image per prompt from the initial noise of its seed in ``noise_seeds``, with the cheaper
    untrained copy where the family made one (``model.untrained_copy``); ``batch_size`` images per pass. Returns
    ``[B, 3, H, W]`` float32 in [0, 1] on CPU (a video family: frames ``[B, F, 3, H, W]``)."""
    sigmas = policy.sigmas(num_steps, resolution)
    images = []
    for i in range(0, len(prompts), batch_size):
        rows = None if inputs is None else inputs[i : i + batch_size]
        cond = policy.condition(prompts[i : i + batch_size], rows).as_dict()
        x = policy.initial_noise(noise_seeds[i : i + batch_size], resolution)
        x, _ = ode_solve(solver, policy.ode_velocity, x, sigmas, cond)  # untrained: the cheaper copy if made
        images.append(policy.decode(x).cpu())
    return torch.cat(images)


__all__ = ["ImagePolicy", "generate", "generate_from_noise"]
