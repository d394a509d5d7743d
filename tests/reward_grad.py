"""A check shared by the reward tests: a differentiable reward's image gradient equals the finite difference."""

from __future__ import annotations

import torch


def assert_image_gradient(reward, images: torch.Tensor, prompts: list[str], h: float = 1e-2, rel: float = 3e-2):
    """The directional derivative of the summed score along a random unit direction u, by autograd (⟨∇, u⟩) and by
    the central difference (s(x + h·u) − s(x − h·u)) / 2h, agree to ``rel``; the gradient is not zero."""
    x = images.clone().requires_grad_(True)
    score = reward(x, prompts)["score"]
    assert score.requires_grad, "the score carries no gradient"
    score.sum().backward()
    u = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    u = u / u.norm()
    with torch.no_grad():
        plus = reward(images + h * u, prompts)["score"].sum()
        minus = reward(images - h * u, prompts)["score"].sum()
    difference = float((plus - minus) / (2 * h))
    analytic = float((x.grad * u).sum())
    assert x.grad.abs().max() > 0
    assert analytic == __import__("pytest").approx(difference, rel=rel, abs=1e-6), (analytic, difference)
