"""Sigma schedules for flow matching (x_σ = (1−σ)·x0 + σ·ε, σ runs 1 → 0).

A schedule is a 1-D tensor of ``T + 1`` decreasing sigmas ending at 0; step ``i`` goes from
``sigmas[i]`` to ``sigmas[i + 1]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """Time-shift sigmas: σ' = s·σ / (1 + (s − 1)·σ) (SD3 uses s = 3). Shape preserved."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def linear_sigmas(num_steps: int, shift: float = 1.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """``num_steps + 1`` sigmas, linear from 1 to 0 in un-shifted time, then shifted. Shape ``[T + 1]``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return shift_sigmas(torch.linspace(1.0, 0.0, num_steps + 1, dtype=dtype), shift)


def dynamic_shift_mu(image_seq_len: int, config: Any) -> float:
    """FLUX's resolution-dependent shift exponent, interpolated linearly in the token count.

    Reads ``base_image_seq_len``, ``max_image_seq_len``, ``base_shift`` and ``max_shift`` from a
    ``FlowMatchEulerDiscreteScheduler`` config.
    """
    base_len, max_len = config.base_image_seq_len, config.max_image_seq_len
    slope = (config.max_shift - config.base_shift) / (max_len - base_len)
    return config.base_shift + slope * (image_seq_len - base_len)


def pipeline_grid(num_steps: int) -> list[float]:
    """The unshifted sigma grid ``linspace(1, 1/T, T)`` that the FLUX.1, Qwen-Image and FLUX.2 pipelines pass to
    their scheduler's ``set_timesteps`` (as numpy's float64 ``linspace``; the scheduler rounds it to float32),
    whether the scheduler then shifts it dynamically or by its fixed ``shift``."""
    return np.linspace(1.0, 1.0 / num_steps, num_steps).tolist()


def scheduler_sigmas(
    scheduler: Any,
    num_steps: int,
    image_seq_len: int | None = None,
    shift: float = 0.0,
    grid: list[float] | None = None,
    mu: float | None = None,
) -> Tensor:
    """Sigmas a diffusers ``FlowMatchEulerDiscreteScheduler`` uses for ``num_steps`` steps when a pipeline calls
    its ``set_timesteps`` as given here. Shape ``[T + 1]``.

    ``grid`` is the unshifted sigma grid the pipeline passes (``pipeline_grid`` for FLUX.1, Qwen-Image and FLUX.2;
    Z-Image's float32 ``linspace``); None is the scheduler's own spacing, ``set_timesteps(num_steps)``, which is what
    SD3's pipeline asks for (evenly spaced over the scheduler's shifted training range, so its last sigma is not
    1/T: shift 2, 4 steps gives 1, .80, .50, .004 where the grid gives 1, .857, .667, .4). The scheduler's config
    then shifts the grid: by its fixed ``shift`` or, with ``use_dynamic_shifting``, by the exponent ``mu``
    (default: FLUX's, from ``image_seq_len``, the packed token count). The scheduler is modified in place, as a
    pipeline call would. A ``shift`` > 0 overrides all of this with ``linear_sigmas(num_steps, shift)``, the
    fixed-shift linear grid that DanceGRPO, MixGRPO and Pref-GRPO sample FLUX on (their ``--shift 3``).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift > 0:
        return linear_sigmas(num_steps, shift)
    options: dict[str, Any] = {}
    if getattr(scheduler.config, "use_dynamic_shifting", False):
        if image_seq_len is None and mu is None:
            raise ValueError("this scheduler uses dynamic shifting (FLUX): pass image_seq_len, the packed token count")
        options["mu"] = mu if mu is not None else dynamic_shift_mu(image_seq_len, scheduler.config)
    if grid is None:
        scheduler.set_timesteps(num_steps, **options)
    else:
        scheduler.set_timesteps(sigmas=grid, **options)
    sigmas = scheduler.sigmas.detach().to("cpu", torch.float64)
    if sigmas.shape != (num_steps + 1,) or sigmas[-1] != 0:
        raise ValueError(
            f"scheduler returned sigmas of shape {tuple(sigmas.shape)} not ending at 0; expected [{num_steps + 1}]"
        )
    return sigmas


def subsample_sigmas(sigmas: Tensor, num_steps: int) -> Tensor:
    """Re-discretise a schedule on ``num_steps`` steps, keeping its first and last sigma.

    Picks evenly spaced indices of the given schedule (so its shift is kept). Used for coarser
    ODE tails (MixGRPO-Flash, G2RPO). ``sigmas``: ``[S + 1]`` → ``[num_steps + 1]``.
    """
    total = sigmas.numel() - 1
    if not 1 <= num_steps <= total:
        raise ValueError(f"num_steps must be in [1, {total}] for a schedule of {total} steps, got {num_steps}")
    idx = [round(i * total / num_steps) for i in range(num_steps + 1)]
    return sigmas[idx]


def respaced_tail(shift: float) -> Callable[[Tensor, int], Tensor]:
    """MixGRPO's tail grid (``dpm_apply_strategy=post`` in its fastvideo/utils/sampling_utils.py): the tail from its
    first sigma to 0 re-spaced evenly in *un-shifted* time on ``num_steps`` steps, then shifted with ``shift`` (the
    fixed-shift linear grid it samples on). ``subsample_sigmas`` instead keeps a subset of the scheduled sigmas; the
    two agree when the tail's step count is a multiple of ``num_steps``. ``[S + 1]`` → ``[num_steps + 1]``."""
    if shift <= 0:
        raise ValueError(f"the re-spaced tail needs the fixed shift of the linear grid (> 0), got {shift}")

    def grid(tail: Tensor, num_steps: int) -> Tensor:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        start = float(tail[0])
        unshifted = start / (shift - (shift - 1) * start)  # the inverse of shift_sigmas
        return shift_sigmas(torch.linspace(unshifted, 0.0, num_steps + 1, dtype=tail.dtype), shift).to(tail.device)

    return grid


def timesteps_from_sigmas(sigmas: Tensor, num_train_timesteps: int = 1000) -> Tensor:
    """diffusers' flow-matching timestep convention: t = σ · num_train_timesteps."""
    return sigmas * num_train_timesteps


__all__ = [
    "dynamic_shift_mu",
    "linear_sigmas",
    "pipeline_grid",
    "respaced_tail",
    "scheduler_sigmas",
    "shift_sigmas",
    "subsample_sigmas",
    "timesteps_from_sigmas",
]
