"""The reliability suite's fixtures; its helpers are in reliability_kit.py."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def single_torch_thread():
    """One torch thread in and out of the forked children: results are bitwise comparable, and
    OpenMP threads do not spin against the other processes on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
