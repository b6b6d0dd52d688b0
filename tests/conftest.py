import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Two test processes share two cores: one thread each keeps them from fighting.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def annotation_cache(tmp_path_factory):
    """Tests keep their annotation cache in a temporary folder, not in the user's ~/.cache."""
    previous = os.environ.get("RESNET_DETECTION_ANNOTATION_CACHE")
    os.environ["RESNET_DETECTION_ANNOTATION_CACHE"] = str(tmp_path_factory.mktemp("annotation-cache"))
    yield os.environ["RESNET_DETECTION_ANNOTATION_CACHE"]
    if previous is None:
        del os.environ["RESNET_DETECTION_ANNOTATION_CACHE"]
    else:
        os.environ["RESNET_DETECTION_ANNOTATION_CACHE"] = previous


@pytest.fixture
def repo_root():
    return ROOT
