"""Standard errors with the prompt as the unit, by hand and by the coverage of their intervals."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from flowrl.core.seeds import eval_noise_seeds
from flowrl.core.stats import mean_se, prompt_mean_se, unit_means
from flowrl.image.models.common import seeded_noise


def test_prompt_mean_se_by_hand():
    values = torch.tensor([1.0, 3.0, 2.0, 2.0, 6.0, 4.0])
    prompts = ["a", "a", "b", "b", "c", "c"]
    # prompt means 2, 2, 5: mean 3, sample sd sqrt(3), SE sqrt(3)/sqrt(3) = 1
    assert prompt_mean_se(values, prompts) == pytest.approx((3.0, 1.0))
    # the per-image SE of the same numbers is smaller: squared deviations 4+0+1+1+9+1 = 16, sd sqrt(16/5), n = 6
    assert mean_se(values) == pytest.approx((3.0, math.sqrt(16 / 5) / math.sqrt(6)))
    # order does not matter; NaN (unscored) values are left out; a prompt with none is dropped
    order = [5, 2, 0, 4, 1, 3]
    assert prompt_mean_se(values[order], [prompts[i] for i in order]) == pytest.approx((3.0, 1.0))
    with_nan = torch.tensor([1.0, 3.0, 2.0, math.nan, 6.0, 4.0, math.nan])
    assert unit_means(with_nan, [*prompts, "d"]).tolist() == [2.0, 2.0, 5.0]
    m, se = prompt_mean_se(torch.tensor([0.5, 0.7]), ["a", "a"])
    assert m == pytest.approx(0.6) and math.isnan(se)  # one prompt: no spread to measure
    with pytest.raises(ValueError, match="unit labels"):
        prompt_mean_se(values, prompts[:3])


def _prompt_effect(prompt: str) -> float:
    """A fixed difficulty per prompt text, uniform in [-1, 1] (mean 0 over the population)."""
    h = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")
    return 2 * h / 2**64 - 1


def _reward(prompts: list[str], noise_seeds: list[int]) -> torch.Tensor:
    """A synthetic policy's reward, driven mostly by its initial noise: 0.5 + 0.8·z + 0.3·prompt effect, where z is
    the noise tensor's standardised mean (standard normal). The population mean is exactly 0.5."""
    noise = seeded_noise((4, 4, 4), noise_seeds, torch.device("cpu"), torch.float32)
    z = noise.flatten(1).mean(1) * 8  # sqrt(64)
    return 0.5 + 0.8 * z + 0.3 * torch.tensor([_prompt_effect(p) for p in prompts])


def test_interval_over_prompts_covers_at_its_nominal_rate_where_per_image_does_not():
    """300 evaluations of 30 fresh prompts × 2 seeds each. Per-pair noise with the prompt-unit SE: the 95% interval
    covers the true mean about 95% of the time. The old protocol (one noise tensor per seed index, shared by every
    prompt, and a per-image SE) covers it far less often, as the mean rests on two noise draws."""
    truth, n_prompts, n_seeds, reps = 0.5, 30, 2, 300
    covered_new = covered_old = 0
    for r in range(reps):
        texts = [f"prompt {r}-{j}" for j in range(n_prompts)]
        prompts = [p for p in texts for _ in range(n_seeds)]
        indices = [k for _ in texts for k in range(n_seeds)]
        new = _reward(prompts, eval_noise_seeds(prompts, indices))
        mean, se = prompt_mean_se(new, prompts)
        covered_new += abs(mean - truth) <= 1.96 * se
        old = _reward(prompts, [r * n_seeds + k for k in indices])  # fresh shared noise for every evaluation
        mean, se = mean_se(old)
        covered_old += abs(mean - truth) <= 1.96 * se
    assert 0.90 <= covered_new / reps <= 0.99, covered_new / reps
    assert covered_old / reps < 0.5, covered_old / reps
