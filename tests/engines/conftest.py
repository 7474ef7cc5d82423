from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny matmuls on a shared 2-core box: OpenMP spin-waiting between two threads costs 10x more
    # than the work itself.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
