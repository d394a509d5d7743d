"""Deterministic image generation and scoring: the evaluation path shared by the trainer, the
pretraining script and the gallery. Each sample's initial noise comes from its own seed, so an
image depends only on (weights, prompt, seed, schedule), never on batch composition."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from flowrl.samplers import ode_solve


class ImagePolicy(Protocol):
    """What generation needs from a model adapter (``flowrl.models.SD3Policy`` is one)."""

    def encode(self, prompts: list[str], with_negative: bool | None = None): ...
    def initial_noise(self, seeds: list[int], resolution: int) -> Tensor: ...
    def sigmas(self, num_steps: int, resolution: int) -> Tensor: ...
    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor: ...
    def decode(self, latents: Tensor) -> Tensor: ...


@torch.no_grad()
def generate(
    policy: ImagePolicy,
    prompts: list[str],
    seeds: list[int],
    *,
    resolution: int,
    num_steps: int,
    solver: str = "euler",
    batch_size: int = 64,
) -> Tensor:
    """ODE-sample one image per (prompt, seed) pair. Returns ``[B, 3, H, W]`` float32 in [0, 1] on CPU."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    sigmas = policy.sigmas(num_steps, resolution)
    images = []
    for i in range(0, len(prompts), batch_size):
        cond = policy.encode(prompts[i : i + batch_size]).as_dict()
        x = policy.initial_noise(seeds[i : i + batch_size], resolution)
        x, _ = ode_solve(solver, policy.velocity, x, sigmas, cond)
        images.append(policy.decode(x).cpu())
    return torch.cat(images)


__all__ = ["ImagePolicy", "generate"]
