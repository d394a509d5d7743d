"""Noise levels of the sample objectives: at which σ each clean sample x0 is re-noised for its loss rows.

Every scheme is a registered function ``fn(levels, sigmas, n, gen) -> σ [n, K]``: K rows per sample, drawn once per
iteration (so a row keeps its σ across inner epochs and optimizer steps). ``sigmas`` is the sampling schedule
``[T + 1]`` (σ_0 = the start, σ_T = 0). A loss trained on samples declares options that extend ``RenoiseOptions``:
``loss.<name>.renoise`` picks the scheme (its default is the loss's own: uniform for awm, subset for nft).

- ``uniform`` (flowrl's AWM default): K = 1, one schedule level σ_0..σ_{T−1}, uniformly;
- ``subset`` (DiffusionNFT train_nft_sd3.py): K = max(1, int(T·train.timestep_fraction)), the first K of a random
  permutation of the T levels;
- ``stratified`` (AWM ``time_type=discrete_wo_init``): K = ``renoise_count`` index strata of 1..int(T·fraction)
  (the start left out), one uniform index in each;
- ``logit-normal`` (AWM ``time_type=logit_normal``): K = ``renoise_count`` continuous levels, one per normal
  quantile stratum, through a sigmoid, shifted by ``renoise_shift``, at least 0.01.

AWM draws one set of levels per micro-batch and trains every sample of it at each; flowrl draws a set per sample,
which gives each sample the same distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from flowrl.core.options import option
from flowrl.core.registry import Registry


def scheme_option(default: str, why: str) -> Any:
    """A loss's ``renoise`` option: one of the registered schemes, ``default`` its own, ``why`` its source."""
    return option(default, f"the noise levels its rows train at (flowrl.core.losses.renoise): {why}",
                  choices=lambda: RENOISE.names())  # fmt: skip


@dataclass
class RenoiseOptions:
    """The re-noising options of a loss trained on samples (its options class extends this one)."""

    FLAT: ClassVar[dict[str, str]] = {"renoise": "renoise", "renoise_count": "renoise_count",
                                      "renoise_shift": "renoise_shift"}  # fmt: skip
    FLAT_DEFAULTS: ClassVar[dict[str, Any]] = {"renoise": "auto"}  # the old flat 'auto': the loss's own scheme

    renoise: str = scheme_option(
        "uniform", "subset is DiffusionNFT's, stratified and logit-normal AWM's discrete_wo_init and logit_normal"
    )
    renoise_count: int = option(6, "stratified / logit-normal: levels per sample (AWM's train_timesteps)", low=1)
    renoise_shift: float = option(3.0, "logit-normal: the time shift (AWM's time_shift)", low=1e-6)
    renoise_each_epoch: bool = option(
        False,
        "with train.inner_epochs > 1: draw each row's noise level and noise again in every inner epoch (True) or "
        "keep them for the whole iteration (False); AWM's code makes one pass, so it has no say",
    )


@dataclass(frozen=True)
class Levels:
    """What a scheme reads, resolved from the config once (``levels_of``)."""

    scheme: str  # ``renoise``
    count: int  # ``renoise_count`` (stratified, logit-normal)
    shift: float  # ``renoise_shift`` (logit-normal)
    top: int  # int(sampler.num_steps · train.timestep_fraction): the highest schedule index the fraction keeps

    @property
    def per_sample(self) -> int:
        """K, the rows of each sample under the scheme."""
        if self.scheme == "uniform":
            return 1
        return max(1, self.top) if self.scheme == "subset" else self.count


Scheme = Callable[[Levels, Tensor, int, torch.Generator], Tensor]  # (levels, sigmas [T+1], n, gen) -> σ [n, K]
RENOISE: Registry[Scheme] = Registry("re-noising scheme")


def levels_of(options: RenoiseOptions, num_steps: int, fraction: float) -> Levels:
    """The ``Levels`` of a sample loss's options with ``sampler.num_steps`` and ``train.timestep_fraction``."""
    if not isinstance(options, RenoiseOptions):
        raise TypeError(f"a loss trained on samples declares options extending RenoiseOptions, got {options!r}")
    return Levels(options.renoise, options.renoise_count, options.renoise_shift, int(num_steps * fraction))


def draw_levels(levels: Levels, sigmas: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """σ of each of ``n`` samples' K rows, ``[n, K]`` (float32)."""
    return RENOISE.get(levels.scheme)(levels, sigmas.float().cpu(), n, gen)


@RENOISE.register("uniform")
def uniform(levels: Levels, sigmas: Tensor, n: int, gen: torch.Generator) -> Tensor:
    return sigmas[:-1][torch.randint(len(sigmas) - 1, (n, 1), generator=gen)]


@RENOISE.register("subset")
def subset(levels: Levels, sigmas: Tensor, n: int, gen: torch.Generator) -> Tensor:
    t, k = len(sigmas) - 1, levels.per_sample
    index = torch.stack([torch.randperm(t, generator=gen)[:k] for _ in range(n)]) if n else torch.zeros(0, k).long()
    return sigmas[index]


@RENOISE.register("stratified")
def stratified(levels: Levels, sigmas: Tensor, n: int, gen: torch.Generator) -> Tensor:
    k, top = levels.count, levels.top
    bounds = torch.linspace(1, top, k + 1).long()
    low, high = bounds[:-1], bounds[1:]
    index = low + (torch.rand(n, k, generator=gen) * (high - low)).long()
    return sigmas[index]


@RENOISE.register("logit-normal")
def logit_normal(levels: Levels, sigmas: Tensor, n: int, gen: torch.Generator) -> Tensor:
    k, shift = levels.count, levels.shift
    quantile = ((torch.arange(k) + torch.rand(n, k, generator=gen)) / k).clamp(1e-7, 1 - 1e-7)
    u = torch.distributions.Normal(0.0, 1.0).icdf(quantile)
    u = torch.stack([row[torch.randperm(k, generator=gen)] for row in u]) if n else u
    t = torch.sigmoid(u)
    return (shift * t / (1 + (shift - 1) * t)).clamp(min=0.01)


__all__ = ["RENOISE", "Levels", "RenoiseOptions", "draw_levels", "levels_of", "scheme_option"]
