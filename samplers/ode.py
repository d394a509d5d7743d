"""Deterministic ODE solvers for flow models on an arbitrary decreasing sigma schedule.

``dpm_solver_2m`` is the second-order multistep DPM-Solver++ in data (x0) prediction, written
for flow matching (α_σ = 1 − σ, λ = log(α/σ)). With x̂0 = x − σ·v and h = λ_t − λ_s:

    first order:  x_t = (σ_t/σ_s)·x_s + α_t·(1 − e^{−h})·x̂0_s
    2M:           same with x̂0_s replaced by D = (1 + 1/(2r))·x̂0_s − 1/(2r)·x̂0_prev, r = h_prev/h

The first step and the last step into σ = 0 are first order (λ is infinite there), which is what
diffusers' ``DPMSolverMultistepScheduler`` does with zero final sigma. Unlike that scheduler it can
start from any σ, so it serves as the coarse tail after a training window (MixGRPO-Flash).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from flowrl.core.registry import Registry

from .transitions import Velocity


def sigma_batch(sigma: float, x: Tensor) -> Tensor:
    """σ as a ``[B]`` tensor on x's device, in at least float32."""
    return torch.full((x.shape[0],), float(sigma), device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))


def _check_schedule(sigmas: Tensor) -> list[float]:
    values = [float(s) for s in sigmas]
    if len(values) < 2 or any(b >= a for a, b in pairwise(values)):
        raise ValueError(f"sigmas must be a strictly decreasing schedule of length >= 2, got {values}")
    return values


def euler_solve(velocity: Velocity, x: Tensor, sigmas: Tensor, cond: Any = None) -> tuple[Tensor, int]:
    """Euler ODE from ``sigmas[0]`` to ``sigmas[-1]``. x: ``[B, *S]``. Returns (x_end, NFE)."""
    values = _check_schedule(sigmas)
    for s, t in pairwise(values):
        x = x + (t - s) * velocity(x, sigma_batch(s, x), cond).to(x.dtype)
    return x, len(values) - 1


def dpm_solver_2m(velocity: Velocity, x: Tensor, sigmas: Tensor, cond: Any = None) -> tuple[Tensor, int]:
    """DPM-Solver++(2M) from ``sigmas[0]`` to ``sigmas[-1]``. x: ``[B, *S]``. Returns (x_end, NFE)."""
    values = _check_schedule(sigmas)
    if values[0] > 1:
        raise ValueError(f"flow sigmas must be <= 1, got {values[0]}")

    def lam(s: float) -> float:
        return math.inf if s == 0 else (-math.inf if s == 1 else math.log((1 - s) / s))

    prev_x0: Tensor | None = None
    prev_h = math.inf
    for s, t in pairwise(values):
        x0 = x - s * velocity(x, sigma_batch(s, x), cond).to(x.dtype)
        if t == 0:
            x = x0  # first order into σ = 0: x_t = x̂0
        else:
            h = lam(t) - lam(s)
            d = x0
            if prev_x0 is not None and math.isfinite(prev_h):
                r = prev_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            exp_neg_h = (t * (1 - s)) / (s * (1 - t))  # e^{−h}, finite even at s = 1
            x = (t / s) * x + (1 - t) * (1 - exp_neg_h) * d
            prev_h = h
        prev_x0 = x0
    return x, len(values) - 1


OdeSolver = Callable[[Velocity, Tensor, Tensor, Any], tuple[Tensor, int]]  # (velocity, x, sigmas, cond) -> (x, NFE)
ODE_SOLVERS: Registry[OdeSolver] = Registry("ODE solver")
ODE_SOLVERS.register("euler")(euler_solve)
ODE_SOLVERS.register("dpm2m")(dpm_solver_2m)


def ode_solve(solver: str, velocity: Velocity, x: Tensor, sigmas: Tensor, cond: Any = None) -> tuple[Tensor, int]:
    """Run the named ODE solver (``euler`` or ``dpm2m``). Returns (x_end, NFE)."""
    return ODE_SOLVERS.get(solver)(velocity, x, sigmas, cond)


__all__ = ["ODE_SOLVERS", "OdeSolver", "dpm_solver_2m", "euler_solve", "ode_solve", "sigma_batch"]
