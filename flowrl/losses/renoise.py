"""Noise levels of the sample objectives: at which σ each clean sample x0 is re-noised for its loss rows.

Every scheme is a registered function ``fn(cfg, sigmas, n, gen) -> σ [n, K]``: K rows per sample, drawn once per
iteration (so a row keeps its σ across inner epochs and optimizer steps). ``sigmas`` is the sampling schedule
``[T + 1]`` (σ_0 = the start, σ_T = 0); ``loss.renoise`` picks the scheme, ``auto`` the loss's own
(``LossFacts.levels``).

- ``uniform`` (flowrl's AWM default): K = 1, one schedule level σ_0..σ_{T−1}, uniformly;
- ``subset`` (DiffusionNFT train_nft_sd3.py): K = max(1, int(T·train.timestep_fraction)), the first K of a random
  permutation of the T levels;
- ``stratified`` (AWM ``time_type=discrete_wo_init``): K = loss.renoise_count index strata of 1..int(T·fraction)
  (the start left out), one uniform index in each;
- ``logit-normal`` (AWM ``time_type=logit_normal``): K = loss.renoise_count continuous levels, one per normal
  quantile stratum, through a sigmoid, shifted by loss.renoise_shift, at least 0.01.

AWM draws one set of levels per micro-batch and trains every sample of it at each; flowrl draws a set per sample,
which gives each sample the same distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flowrl.registry import Registry

from .core import LOSSES

if TYPE_CHECKING:
    from flowrl.config import Config

Levels = Callable[["Config", Tensor, int, torch.Generator], Tensor]  # (cfg, sigmas [T+1], n, gen) -> σ [n, K]
RENOISE: Registry[Levels] = Registry("re-noising scheme")


def levels_per_sample(cfg: Config) -> int:
    """K, the rows of each sample under the configured scheme."""
    scheme = scheme_of(cfg)
    if scheme == "uniform":
        return 1
    if scheme == "subset":
        return max(1, int(cfg.sampler.num_steps * cfg.train.timestep_fraction))
    return cfg.loss.renoise_count


def scheme_of(cfg: Config) -> str:
    """``loss.renoise``, with ``auto`` resolved to the loss's declared levels."""
    return LOSSES.facts(cfg.loss.name).levels if cfg.loss.renoise == "auto" else cfg.loss.renoise


def draw_levels(cfg: Config, sigmas: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """σ of each of ``n`` samples' K rows, ``[n, K]`` (float32)."""
    return RENOISE.get(scheme_of(cfg))(cfg, sigmas.float().cpu(), n, gen)


@RENOISE.register("uniform")
def uniform(cfg: Config, sigmas: Tensor, n: int, gen: torch.Generator) -> Tensor:
    return sigmas[:-1][torch.randint(len(sigmas) - 1, (n, 1), generator=gen)]


@RENOISE.register("subset")
def subset(cfg: Config, sigmas: Tensor, n: int, gen: torch.Generator) -> Tensor:
    t, k = len(sigmas) - 1, levels_per_sample(cfg)
    index = torch.stack([torch.randperm(t, generator=gen)[:k] for _ in range(n)]) if n else torch.zeros(0, k).long()
    return sigmas[index]


@RENOISE.register("stratified")
def stratified(cfg: Config, sigmas: Tensor, n: int, gen: torch.Generator) -> Tensor:
    k, top = cfg.loss.renoise_count, int(cfg.sampler.num_steps * cfg.train.timestep_fraction)
    bounds = torch.linspace(1, top, k + 1).long()
    low, high = bounds[:-1], bounds[1:]
    index = low + (torch.rand(n, k, generator=gen) * (high - low)).long()
    return sigmas[index]


@RENOISE.register("logit-normal")
def logit_normal(cfg: Config, sigmas: Tensor, n: int, gen: torch.Generator) -> Tensor:
    k, shift = cfg.loss.renoise_count, cfg.loss.renoise_shift
    quantile = ((torch.arange(k) + torch.rand(n, k, generator=gen)) / k).clamp(1e-7, 1 - 1e-7)
    u = torch.distributions.Normal(0.0, 1.0).icdf(quantile)
    u = torch.stack([row[torch.randperm(k, generator=gen)] for row in u]) if n else u
    t = torch.sigmoid(u)
    return (shift * t / (1 + (shift - 1) * t)).clamp(min=0.01)


__all__ = ["RENOISE", "draw_levels", "levels_per_sample", "scheme_of"]
