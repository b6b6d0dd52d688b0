import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Two test processes share two cores: one thread each keeps them from fighting.
torch.set_num_threads(1)


@pytest.fixture
def repo_root():
    return ROOT
