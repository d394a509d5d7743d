"""One denoising step of a flow-matching model, with the Gaussian log-probability RL needs.

Every stochastic step here is Gaussian: x_next ~ N(mean, s²·I). A step *kind* fixes two things:
the step std ``s`` (from σ, σ_next and a noise level) and the mean (from x, the velocity v and s).
Keeping them apart means a stored transition needs only its ``s`` to be replayed under new
parameters: ``s`` never depends on the network, the mean does.

Kinds (dt = σ_next − σ < 0, ε̂ = x + (1−σ)·v the predicted noise, x̂0 = x − σ·v):

- ``ode``: Euler, s = 0, mean = x + dt·v.
- ``flow_sde`` (Flow-GRPO): s = a·sqrt(σ/(1−σ))·sqrt(−dt); at σ = 1 the denominator uses
  1 − σ_cap (the schedule's second sigma).
- ``dance_sde`` (DanceGRPO): s = η·sqrt(−dt).
- ``cps`` (coefficient-preserving): s = σ_next·sin(aπ/2). ``flowcps``: the same step with FlowCPS's log-prob
  convention, −mean((x_next − mean)²) (no 1/(2s²), no constants), so that its clip ranges keep their meaning.

Both SDE kinds share one mean, the Euler–Maruyama step of the reverse-time SDE whose marginals
match the ODE's: mean = x + dt·v − s²/(2σ)·ε̂. (Written with std_t = s/sqrt(−dt) this is the
published x + dt·(v + std_t²/(2σ)·ε̂).) At s = 0 it is the Euler step exactly.
CPS: mean = (1 − σ_next)·x̂0 + sqrt(σ_next² − s²)·ε̂.

Log-probs are averaged (not summed) over the non-batch dimensions, the published convention;
it keeps log-ratios around 1e-4 per step, hence the small clip ranges of Flow-GRPO.
Shapes: x, v: ``[B, *S]``; σ, σ_next, s: scalars or ``[B]``; log-probs ``[B]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from flowrl.core.registry import Registry


class StepKind(Protocol):
    """One kind of step: its std ``s`` and its mean. sigma, sigma_next, std: ``[B]``; x, v: ``[B, *S]`` (compute dtype,
    already broadcast by ``step_mean``)."""

    def std(
        self, sigma: Tensor, sigma_next: Tensor, noise_level: float | Tensor, sigma_cap: float | None
    ) -> Tensor: ...

    def mean(self, x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, std: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class StepFacts:
    """stochastic: the step draws noise (s > 0), so its transitions have a log-prob and can be trained."""

    stochastic: bool = True


STEP_KINDS: Registry[StepKind, StepFacts] = Registry("step kind", StepFacts)


def check_kind(kind: str) -> None:
    """Raise a ``ValueError`` naming the valid kinds if ``kind`` is not one."""
    STEP_KINDS.get(kind)


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Half-precision step math loses the 1e-4 log-ratios RL relies on; work in at least fp32.
    return torch.promote_types(x.dtype, torch.float32)


def _per_sample(value: Tensor | float, x: Tensor) -> Tensor:
    """A scalar or ``[B]`` value as a ``[B]`` tensor in x's compute dtype and device."""
    t = torch.as_tensor(value, dtype=_compute_dtype(x), device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"per-sample value has shape {tuple(t.shape)}; expected a scalar or [{x.shape[0]}]")
    return t


def _expand(t: Tensor, x: Tensor) -> Tensor:
    """``[B]`` → ``[B, 1, ..., 1]`` to broadcast against x."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def _sde_mean(x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, std: Tensor) -> Tensor:
    """The Euler–Maruyama mean both SDE kinds (and, at s = 0, the ODE) share: x + dt·v − s²/(2σ)·ε̂."""
    return x + (sigma_next - sigma) * v - std**2 / (2 * sigma) * (x + (1 - sigma) * v)


class _Ode:
    def std(self, sigma, sigma_next, noise_level, sigma_cap):
        return torch.zeros_like(sigma)

    mean = staticmethod(_sde_mean)


class _FlowSde:
    def std(self, sigma, sigma_next, noise_level, sigma_cap):
        at_one = sigma >= 1
        if torch.any(at_one) and sigma_cap is None:
            raise ValueError("flow_sde at sigma = 1 needs sigma_cap (the schedule's second sigma)")
        denom_sigma = torch.where(at_one, sigma.new_tensor(sigma_cap if sigma_cap is not None else 0.0), sigma)
        return noise_level * torch.sqrt(sigma / (1 - denom_sigma)) * torch.sqrt(sigma - sigma_next)

    mean = staticmethod(_sde_mean)


class _DanceSde:
    def std(self, sigma, sigma_next, noise_level, sigma_cap):
        return noise_level * torch.sqrt(sigma - sigma_next)

    mean = staticmethod(_sde_mean)


class _Cps:
    def std(self, sigma, sigma_next, noise_level, sigma_cap):
        return sigma_next * torch.sin(torch.as_tensor(noise_level, dtype=sigma.dtype) * math.pi / 2)

    def mean(self, x, v, sigma, sigma_next, std):
        x0_hat, eps_hat = x - sigma * v, x + (1 - sigma) * v
        return (1 - sigma_next) * x0_hat + torch.sqrt(sigma_next**2 - std**2) * eps_hat


class _FlowCps(_Cps):
    """CPS with FlowCPS's log-prob (flow_grpo/diffusers_patch/sd3_sde_with_logprob.py in IamCreateAI/FlowCPS):
    −mean((x_next − mean)²), the Gaussian's constants and its 1/(2s²) removed. Log-ratios are then 2s² times the
    Gaussian's, so FlowCPS's clip ranges mean what they meant there."""

    @staticmethod
    def log_prob(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        d = x_next.to(mean.dtype) - mean
        return -(d**2).mean(dim=tuple(range(1, d.ndim)))


STEP_KINDS.register("ode", stochastic=False)(_Ode())
STEP_KINDS.register("flow_sde")(_FlowSde())
STEP_KINDS.register("dance_sde")(_DanceSde())
STEP_KINDS.register("cps")(_Cps())
STEP_KINDS.register("flowcps")(_FlowCps())


def step_std(
    kind: str,
    sigma: Tensor,
    sigma_next: Tensor,
    noise_level: float | Tensor,
    sigma_cap: float | None = None,
) -> Tensor:
    """Step std ``s`` of a step from ``sigma`` to ``sigma_next`` (tensors of equal shape, e.g. ``[B]``).

    ``noise_level`` is a (Flow-SDE, CPS) or η (Dance-SDE); it is ignored by ``ode``.
    ``sigma_cap`` is the schedule's second sigma, needed by ``flow_sde`` only when σ = 1.
    """
    step = STEP_KINDS.get(kind)
    if torch.any(sigma_next >= sigma):
        raise ValueError("sigma_next must be smaller than sigma (sigmas run from 1 to 0)")
    return step.std(sigma, sigma_next, noise_level, sigma_cap)


def step_mean(kind: str, x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, std: Tensor) -> Tensor:
    """Mean of the next sample given the velocity ``v``. x, v: ``[B, *S]``; sigma, sigma_next, std: ``[B]``."""
    step = STEP_KINDS.get(kind)
    x, v = x.to(_compute_dtype(x)), v.to(_compute_dtype(x))
    sigma, sigma_next, std = (_expand(_per_sample(t, x), x) for t in (sigma, sigma_next, std))
    return step.mean(x, v, sigma, sigma_next, std)


def gaussian_log_prob(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x_next; mean, s²I) averaged over non-batch dims. ``[B, *S]``, ``[B, *S]``, ``[B]`` → ``[B]``."""
    if torch.any(std <= 0):
        raise ValueError("log-prob of a deterministic step (std = 0) is undefined")
    x_next = x_next.to(mean.dtype)
    s = _expand(std.to(mean.dtype), mean)
    lp = -((x_next - mean) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, lp.ndim)))


@dataclass
class StepOutput:
    """Result of one sampled step.

    x_next: ``[B, *S]`` in x's dtype; mean: ``[B, *S]`` (compute dtype); std: ``[B]``;
    log_prob: ``[B]``, or None for a deterministic step (std = 0), where no density exists.
    """

    x_next: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor | None


def sample_step(
    kind: str,
    x: Tensor,
    v: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    noise_level: float = 0.0,
    *,
    sigma_cap: float | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    noise_rows: tuple[int, int] | None = None,
) -> StepOutput:
    """Take one step from ``x`` (``[B, *S]``) at ``sigma`` to ``sigma_next`` with velocity ``v``.

    Noise comes from ``noise`` if given (``[B, *S]``), else from ``generator``. ``noise_rows = (first, total)``:
    ``generator`` draws noise for ``total`` rows and this batch is rows ``first..first+B-1`` of them (a process's
    share of a batch split over processes gets exactly the noise it would get in the whole batch).
    The log-prob is computed on ``x_next`` after the cast back to x's dtype, so replaying the
    stored sample under unchanged parameters gives a ratio of exactly 1.
    """
    sig, sig_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    std = step_std(kind, sig, sig_next, noise_level, sigma_cap)
    mean = step_mean(kind, x, v, sig, sig_next, std)
    if torch.all(std == 0):
        return StepOutput(mean.to(x.dtype), mean, std, None)
    if torch.any(std == 0):
        raise ValueError("a batch mixes deterministic and stochastic steps; split it by sigma")
    if noise is None:
        first, total = noise_rows or (0, x.shape[0])
        noise = torch.randn((total, *x.shape[1:]), generator=generator, device=x.device, dtype=mean.dtype)
        noise = noise[first : first + x.shape[0]]
    elif noise.shape != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {tuple(x.shape)}")
    x_next = (mean + _expand(std, mean) * noise.to(mean.dtype)).to(x.dtype)
    return StepOutput(x_next, mean, std, kind_log_prob(kind, x_next, mean, std))


def step_log_prob(
    kind: str, x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, x_next: Tensor, std: Tensor
) -> tuple[Tensor, Tensor]:
    """Log-prob ``[B]`` and mean ``[B, *S]`` of a GIVEN ``x_next`` under velocity ``v`` (training).

    ``std`` is the stored step std of the transition (it does not depend on the network).
    Gradients flow through ``v`` into both outputs.
    """
    std = _per_sample(std, x)
    mean = step_mean(kind, x, v, sigma, sigma_next, std)
    return kind_log_prob(kind, x_next, mean, std), mean


def kind_log_prob(kind: str, x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """The step kind's log-prob ``[B]``: the Gaussian density unless the kind states its source's convention."""
    own = getattr(STEP_KINDS.get(kind), "log_prob", None)
    return own(x_next, mean, std) if own is not None else gaussian_log_prob(x_next, mean, std)


__all__ = [
    "STEP_KINDS",
    "StepFacts",
    "StepKind",
    "StepOutput",
    "check_kind",
    "gaussian_log_prob",
    "kind_log_prob",
    "sample_step",
    "step_log_prob",
    "step_mean",
    "step_std",
]
