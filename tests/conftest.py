"""Shared pytest fixtures: seeded generators and CUDA skipping."""

from __future__ import annotations

import pytest
import torch

# Tests use tiny tensors: one intra-op thread is as fast and avoids OpenMP spin-waiting on shared CPUs
# (measured here: 2 threads made small ops up to ~50x slower on a loaded 2-core machine).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
