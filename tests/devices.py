"""Where the tests' inputs go when the trainer runs on an accelerator."""

from __future__ import annotations

import torch


def on_device(value, device):
    """``value`` (a tensor, or a dict of them) on ``device``: tests build inputs on the CPU and compare with a
    trainer that runs wherever accelerate put it (a GPU when there is one)."""
    if isinstance(value, dict):
        return {k: on_device(v, device) for k, v in value.items()}
    return value.to(device) if isinstance(value, torch.Tensor) else value


def velocity_on_cpu(policy, x, sigma, cond):
    """``policy.velocity`` of CPU inputs, computed on the policy's device and returned on the CPU."""
    device = policy.device
    return policy.velocity(on_device(x, device), on_device(sigma, device), on_device(cond, device)).cpu()


def bitwise_on_cpu(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit on a CPU. A GPU picks its kernels by batch shape, so the same rows computed in another batch
    may differ in the last bits there (a replayed log-prob by at most 2.4e-7 on an H100): within 1e-5."""
    if a.device.type == "cpu" or not a.is_floating_point():
        return torch.equal(a, b)
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5)
