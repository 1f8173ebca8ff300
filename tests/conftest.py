"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors gain nothing from intra-op threads, and with pytest-xdist running one
    # worker per core, extra threads only oversubscribe the CPU (30-50x slower when busy).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
