import pytest

from tests.helpers import make_fixed_size_shapes


@pytest.fixture(scope="module")
def fixed_shapes(tmp_path_factory):
    """8 training and 2 validation images of one size (no padding: batches split exactly)."""
    root = tmp_path_factory.mktemp("fixed_shapes")
    make_fixed_size_shapes(str(root), "train", 8, seed=0)
    make_fixed_size_shapes(str(root), "val", 2, seed=1)
    return root
