import pytest
import torch

from flowrl.models.toy import build_toy_model, save_sd3_folder
from flowrl.samplers import GaussianFlow


@pytest.fixture
def gaussian() -> GaussianFlow:
    """2-D Gaussian data with different means and scales per dimension (float64 for exactness)."""
    return GaussianFlow(torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.5, 1.2], dtype=torch.float64))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A tiny toy-architecture SD3 pipeline folder (2 blocks, width 64), saved once per test module."""
    path = str(tmp_path_factory.mktemp("tiny") / "toy-sd3")
    save_sd3_folder(build_toy_model(seed=0, width=64, layers=2, text_width=32), path)
    return path
