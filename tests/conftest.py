import pytest
import torch

from flowrl.samplers import GaussianFlow


@pytest.fixture
def gaussian() -> GaussianFlow:
    """2-D Gaussian data with different means and scales per dimension (float64 for exactness)."""
    return GaussianFlow(torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.5, 1.2], dtype=torch.float64))
