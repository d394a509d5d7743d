"""An exactly solvable flow: Gaussian data, whose velocity field and ODE flow map are known.

Data x0 ~ N(μ, diag(s²)), noise ε ~ N(0, I), x_σ = (1−σ)·x0 + σ·ε. Then x_σ is Gaussian with
mean m_σ = (1−σ)·μ and variance V_σ = (1−σ)²·s² + σ², and the optimal velocity is the
regression of ε − x0 on x_σ:

    v(x, σ) = −μ + (σ − (1−σ)·s²) / V_σ · (x − m_σ).

The probability-flow ODE maps x at σ to (x − m_σ)·sqrt(V_τ/V_σ) + m_τ at τ. Used to test that
samplers preserve marginals and that ODE solvers converge at their order, and by the sampler demo.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class GaussianFlow:
    """Velocity field of Gaussian data with per-dimension mean ``mu`` and std ``scale`` (shape ``[*S]``)."""

    def __init__(self, mu: Tensor, scale: Tensor) -> None:
        if mu.shape != scale.shape:
            raise ValueError(f"mu {tuple(mu.shape)} and scale {tuple(scale.shape)} must have the same shape")
        self.mu, self.scale = mu, scale

    def _stats(self, sigma: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
        s = s.reshape(-1, *([1] * (like.ndim - 1))) if s.ndim else s
        mean = (1 - s) * self.mu.to(like)
        var = (1 - s) ** 2 * self.scale.to(like) ** 2 + s**2
        return mean, var

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """Exact velocity at ``x`` (``[B, *S]``), ``sigma`` scalar or ``[B]``. ``cond`` is ignored."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s = s.reshape(-1, *([1] * (x.ndim - 1))) if s.ndim else s
        mean, var = self._stats(sigma, x)
        return -self.mu.to(x) + (s - (1 - s) * self.scale.to(x) ** 2) / var * (x - mean)

    def flow_map(self, x: Tensor, sigma: float, sigma_to: float) -> Tensor:
        """Exact ODE solution: transport ``x`` (``[B, *S]``) from ``sigma`` to ``sigma_to``."""
        m_from, v_from = self._stats(torch.tensor(sigma), x)
        m_to, v_to = self._stats(torch.tensor(sigma_to), x)
        return (x - m_from) * torch.sqrt(v_to / v_from) + m_to


__all__ = ["GaussianFlow"]
