import pytest
import torch

from detection.modeling.box_heads import FCHead, PositionMajorLinear


def pooled_features(rois: int = 5, channels: int = 8, size: int = 3) -> torch.Tensor:
    return torch.randn(rois, channels, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_fc6_computes_the_same_head(channels_last):
    head = FCHead(8, 3, num_fc=2, fc_dim=16)
    pooled = pooled_features()
    with torch.no_grad():
        expected = head(pooled)
        head.read_channels_last()
        assert isinstance(head.fc6, PositionMajorLinear)
        if channels_last:
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(head(pooled), expected, rtol=1e-5, atol=1e-6)


def test_channels_last_fc6_reads_its_input_without_a_copy():
    head = FCHead(8, 3, num_fc=1, fc_dim=4)
    head.read_channels_last()
    pooled = pooled_features().contiguous(memory_format=torch.channels_last)
    flat = pooled.permute(0, 2, 3, 1).flatten(1)
    assert flat.data_ptr() == pooled.data_ptr()  # the view the layer multiplies
    weight = head.fc6.weight_by_position  # column (y, x, c) holds torchvision's column (c, y, x)
    original = FCHead(8, 3, num_fc=1, fc_dim=4)
    original.load_state_dict({"fc6.weight": weight.view(4, 3, 3, 8).permute(0, 3, 1, 2).reshape(4, -1),
                              "fc6.bias": head.fc6.bias})
    with torch.no_grad():
        torch.testing.assert_close(head(pooled), original(pooled), rtol=1e-5, atol=1e-6)


def test_reordered_state_dict_is_never_loaded_as_the_original():
    head, optimized = FCHead(8, 3, num_fc=2, fc_dim=16), FCHead(8, 3, num_fc=2, fc_dim=16)
    optimized.read_channels_last()
    with pytest.raises(RuntimeError, match="fc6.weight"):
        optimized.load_state_dict(head.state_dict())
    with pytest.raises(RuntimeError, match="fc6.weight_by_position"):
        head.load_state_dict(optimized.state_dict())


def test_weight_reorder_in_blocks_matches_a_permutation():
    from detection.modeling.box_heads import reorder_by_position_

    weight = torch.randn(7, 8 * 3 * 3)
    expected = weight.view(7, 8, 3, 3).permute(0, 2, 3, 1).reshape(7, -1)
    storage = weight.data_ptr()
    reorder_by_position_(weight, 8, 3, rows_per_block=3)  # blocks of 3, 3 and 1 rows
    assert weight.data_ptr() == storage
    torch.testing.assert_close(weight, expected, rtol=0, atol=0)
