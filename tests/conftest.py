import os

import pytest
import torch

from flowrl.image.models.toy import build_toy_model, save_sd3_folder
from flowrl.samplers import GaussianFlow

# One intra-op thread per test process, and for the processes the tests start (the variable is inherited): the tiny
# models' matrices are too small to gain from a second thread, while on 2 shared cores OpenMP's waiting threads made
# a tiny train step 5-15x slower in wall time than one thread. An OMP_NUM_THREADS set by the caller is kept.
THREADS = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))
torch.set_num_threads(THREADS)


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


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> str:
    """A tiny random Llama with the toy text task's tokenizer, saved once per test module."""
    from flowrl.text.world import build_model, build_tokenizer

    path = str(tmp_path_factory.mktemp("lm"))
    tokenizer = build_tokenizer()
    build_model(tokenizer, hidden=32, layers=2, heads=2, intermediate=64).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """accelerate keeps one state per process and refuses a second launch with another precision: each test may
    launch its own (on a GPU, a state left by an earlier test in the same worker otherwise sticks)."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        sys.modules["accelerate.state"].AcceleratorState._reset_state()


@pytest.fixture(autouse=True)
def _threads_restored():
    """A test may change torch's thread count (the pretraining scripts set theirs, 2 by default): the next test
    starts with ``THREADS`` again (left at 2, every later tiny train step took 10-20x its CPU time here)."""
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
