"""The ResNet family against torchvision and timm, the paper's FLOP table, and its variants."""

import pytest
import timm
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from backbones import BackboneError, ResNet, build_resnet, create, fold_frozen_bn, resnet18
from tests.helpers import randomize_bn_statistics


def save_torchvision(depth, path):
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    randomize_bn_statistics(model, seed=depth)
    torch.save(model.state_dict(), path)
    return model.eval()


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("depth", [18, 50, 101, 152])
def test_matches_torchvision(depth, tmp_path):
    reference = save_torchvision(depth, tmp_path / "tv.pth")
    ours = build_resnet(depth, weights=str(tmp_path / "tv.pth"), num_classes=1000,
                        out_features=["res5", "logits"]).eval()
    x = torch.randn(2, 3, 160, 192, generator=torch.Generator().manual_seed(depth))
    trunk = torch.nn.Sequential(*list(reference.children())[:-2])
    with torch.no_grad():
        out = ours(x)
        assert relative_error(out["res5"], trunk(x)) < 1e-4
        assert relative_error(out["logits"], reference(x)) < 1e-4


def test_matches_timm_resnet50(tmp_path):
    reference = timm.create_model("resnet50", pretrained=False)
    randomize_bn_statistics(reference, seed=3)
    reference.eval()
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "timm.pth")
    ours = build_resnet(50, weights=str(tmp_path / "timm.pth"), num_classes=1000,
                        out_features=["res5", "logits"]).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = ours(x)
        assert relative_error(out["res5"], reference.forward_features(x)) < 1e-4
        assert relative_error(out["logits"], reference(x)) < 1e-4


# The paper's Table 1, in multiply-adds at 224x224, with the original stride placement.
PAPER_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.parametrize("depth", sorted(PAPER_GMACS))
def test_multiply_adds_match_paper_table(depth):
    model = build_resnet(depth, norm="bn", num_classes=1000, stride_in_1x1=True).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    gmacs = counter.get_total_flops() / 2e9
    assert abs(gmacs - PAPER_GMACS[depth]) / PAPER_GMACS[depth] < 0.05, gmacs


def test_torchvision_stride_placement_costs_more():
    model = build_resnet(50, norm="bn", num_classes=1000).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert 4.0 < counter.get_total_flops() / 2e9 < 4.2


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_parameter_count_equals_torchvision(depth):
    ours = build_resnet(depth, norm="bn", num_classes=1000)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())


def test_feature_names_channels_and_strides():
    x = torch.randn(1, 3, 128, 96)
    for depth, channels in [(18, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))]:
        model = build_resnet(depth, out_features=["stem", "res2", "res3", "res4", "res5"]).eval()
        out = model(x)
        assert list(out) == ["stem", "res2", "res3", "res4", "res5"]
        for name, expected in zip(["res2", "res3", "res4", "res5"], channels):
            assert model.out_channels[name] == expected
            assert out[name].shape[1] == expected
            assert out[name].shape[-1] == 96 // model.out_strides[name]


def test_only_needed_stages_run():
    model = resnet18(out_features=["res3"])
    calls = []
    model.layer4.register_forward_hook(lambda *args: calls.append(1))
    model(torch.randn(1, 3, 64, 64))
    assert calls == []


def test_stride_placement():
    assert build_resnet(50, stride_in_1x1=True).layer2[0].conv1.stride == (2, 2)
    assert build_resnet(50, stride_in_1x1=True).layer2[0].conv2.stride == (1, 1)
    assert build_resnet(50).layer2[0].conv2.stride == (2, 2)


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_shortcut_options_and_plain_network():
    x = torch.randn(2, 3, 64, 64)
    a, b, c = (build_resnet(34, norm="bn", shortcut=s) for s in "ABC")
    plain = build_resnet(34, norm="bn", plain=True)
    # Option A adds no parameters, B projects at the 3 stage transitions, C at every unit.
    assert count(a) == count(plain)
    # By hand: a 1x1 projection from c_in to c_out channels and its BN hold c_in * c_out + 2 * c_out.
    def projection(c_in, c_out):
        return c_in * c_out + 2 * c_out

    transitions = projection(64, 128) + projection(128, 256) + projection(256, 512)
    assert count(b) - count(a) == transitions == 173824
    assert count(c) - count(a) == transitions + 3 * projection(64, 64) + 3 * projection(128, 128) + \
        5 * projection(256, 256) + 2 * projection(512, 512) == 1092992
    # B is torchvision's ResNet-34 without its 1000-way classifier (512 * 1000 weights + 1000 biases).
    assert count(b) == count(torchvision.models.resnet34()) - 513000
    projections_b = sum(m.downsample is not None for m in b.modules() if hasattr(m, "downsample"))
    projections_c = sum(m.downsample is not None for m in c.modules() if hasattr(m, "downsample"))
    assert projections_b == 3 and projections_c == 16
    for model in (a, b, c, plain):
        assert model(x)["res5"].shape == (2, 512, 2, 2)


def test_zero_padding_shortcut_is_identity_plus_zeros():
    from backbones.resnet import ZeroPadShortcut

    x = torch.randn(1, 4, 5, 5)
    y = ZeroPadShortcut(4, 8, 2)(x)
    assert y.shape == (1, 8, 3, 3)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2])
    assert y[:, 4:].abs().sum() == 0


def test_plain_network_has_no_shortcut_path():
    model = build_resnet(18, norm="bn", plain=True).eval()
    block = model.layer1[0]
    x = torch.randn(1, 64, 8, 8)
    expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
    assert torch.allclose(block(x), expected)


def test_preactivation_unit_order():
    model = build_resnet(50, norm="bn", preact=True).eval()
    first, second = model.layer1[0], model.layer1[1]
    # The first unit takes the stem's activation; later units normalize their own input.
    assert isinstance(first.bn1, torch.nn.Identity) and isinstance(second.bn1, torch.nn.BatchNorm2d)
    x = torch.randn(1, 256, 8, 8)
    pre = torch.relu(second.bn1(x))
    branch = second.conv3(torch.relu(second.bn3(second.conv2(torch.relu(second.bn2(second.conv1(pre)))))))
    assert torch.allclose(second(x), x + branch, atol=1e-5)
    # The projection shortcut of a pre-activation unit has no norm of its own.
    assert len(model.layer2[0].downsample) == 1
    out = model(torch.randn(1, 3, 64, 64))["res5"]
    assert out.min() >= 0  # the extra BN-ReLU after the last unit


def test_bad_arguments_name_the_choices():
    with pytest.raises(BackboneError, match="18, 34, 50, 101, 152"):
        ResNet(depth=42)
    with pytest.raises(BackboneError, match="frozen_bn, bn, syncbn, gn"):
        ResNet(depth=18, norm="batchnorm")
    with pytest.raises(BackboneError, match="num_classes"):
        ResNet(depth=18, out_features=["logits"])
    with pytest.raises(BackboneError, match="unknown model"):
        create("resnext50")


def test_freezing_stops_gradients_and_statistics():
    model = build_resnet(18, norm="bn", freeze_at=2, num_classes=10, out_features=["logits"])
    frozen_stats = model.layer1[0].bn1.running_mean.clone()
    trainable_stats = model.layer2[0].bn1.running_mean.clone()
    model.train()
    model(torch.randn(2, 3, 64, 64) * 3 + 1)["logits"].sum().backward()
    assert all(p.grad is None for p in model.conv1.parameters())
    assert all(p.grad is None for p in model.layer1.parameters())
    assert all(not p.requires_grad for p in model.layer1.parameters())
    assert model.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert torch.equal(model.layer1[0].bn1.running_mean, frozen_stats)
    assert not torch.equal(model.layer2[0].bn1.running_mean, trainable_stats)


def test_frozen_bn_statistics_never_change_in_train_mode():
    model = build_resnet(18, norm="frozen_bn", freeze_at=0, num_classes=10, out_features=["logits"])
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "bn" in k}
    model.train()
    model(torch.randn(2, 3, 64, 64))["logits"].sum().backward()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert model.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_fold_frozen_bn_and_channels_last(tmp_path):
    save_torchvision(50, tmp_path / "tv.pth")
    model = build_resnet(50, weights=str(tmp_path / "tv.pth"), out_features=["res4", "res5"]).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        reference = model(x)
        fold_frozen_bn(model)
        assert not any("bn" in type(m).__name__.lower() for m in model.modules())
        folded = model(x)
        model = model.to(memory_format=torch.channels_last)
        fast = model(x.to(memory_format=torch.channels_last))
    for name in reference:
        assert relative_error(folded[name], reference[name]) < 1e-4
        assert relative_error(fast[name], reference[name]) < 1e-4


def test_create_features_only_timm_style():
    model = create("resnet18", features_only=True, out_indices=(1, 2, 3, 4))
    features = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [64, 128, 256, 512]
    assert [64 // f.shape[-1] for f in features] == model.feature_info.reduction() == [4, 8, 16, 32]


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (0,), (1, 3), (-1,), 2, (-5, -2)],
                         ids=["default", "act1", "two", "negative", "last_two", "negatives"])
def test_features_only_means_what_it_means_in_timm(out_indices):
    """The same maps as timm's features_only ResNet-18 holding the same weights, for each form of
    out_indices (index 0 is the stride-2 activation before the max pool), and the same feature_info."""
    torch.manual_seed(5)
    full = randomize_bn_statistics(timm.create_model("resnet18", pretrained=False), seed=5)
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    reference = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=out_indices)
    reference.load_state_dict({k: v for k, v in state.items() if k in reference.state_dict()})  # timm prunes
    ours = create("resnet18", features_only=True, out_indices=out_indices, norm="bn")
    ours.model.load_state_dict(state)
    reference.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected) == len(reference.feature_info.out_indices)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    ours_info, timm_info = ours.feature_info, reference.feature_info
    assert ours_info.out_indices == tuple(timm_info.out_indices)
    assert ours_info.channels() == timm_info.channels() and ours_info.reduction() == timm_info.reduction()
    assert len(ours_info) == len(timm_info) == 5
    for index in range(5):
        assert ours_info.get_dicts(["num_chs", "reduction"], index) == timm_info.get_dicts(["num_chs", "reduction"],
                                                                                           index)
        # Names of this network's modules: timm's names under "model."
        assert ours_info.module_name(index) == "model." + timm_info.module_name(index)
        assert isinstance(ours.get_submodule(ours_info.module_name(index)), torch.nn.Module)
    assert ours_info.channels([0, 4]) == timm_info.channels([0, 4]) == [64, 512]
    assert ours_info[0]["reduction"] == 2


@pytest.mark.parametrize("out_indices, message", [
    ((3, 1), r"out_indices \(3, 1\) must be increasing .*: give \(1, 3\)"),
    ((1, 1), r"must be increasing .*: give \(1,\)"),
    ((1, -4), r"out_indices \(1, -4\) must be increasing"),  # -4 is index 1 again
    ((0, 5), r"entry 5 is not a feature index: give integers in 0..4 \(0 = act1 at stride 2"),
    (("res2",), r"entry 'res2' is not a feature index"),
    (6, r"out_indices=6 asks for the last 6 feature maps: give 1..5"),
    ((), r"give at least one index"),
])
def test_out_indices_timm_would_not_take_or_would_reorder_are_refused(out_indices, message):
    with pytest.raises(BackboneError, match=message):
        create("resnet18", features_only=True, out_indices=out_indices)


def test_act1_feature_is_the_stem_before_max_pooling():
    model = build_resnet(18, out_features=["act1", "stem"]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 48))
    assert model.out_strides["act1"] == 2 and out["act1"].shape == (1, 64, 32, 24)
    torch.testing.assert_close(out["stem"], model.maxpool(out["act1"]), rtol=0, atol=0)


def test_detach_last_stage_for_c4_head():
    """The detached stage leaves the trunk's state dict and computes, on the trunk's res4, the res5
    of the whole network."""
    model = randomize_bn_statistics(build_resnet(50, norm="bn", out_features=["res4", "res5"])).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(x)
        res5 = model.detach_stage("res5")
        assert not any(k.startswith("layer4") for k in model.state_dict())
        assert list(model(x)) == ["res4"]
        torch.testing.assert_close(res5(model(x)["res4"]), whole["res5"], rtol=0, atol=0)


def test_detaching_res5_of_a_preact_net_takes_its_final_bn_relu_along():
    """The final BN-ReLU of a pre-activation net follows res5: left in the trunk, the detached stage's
    output lacked it (and the trunk kept weights nothing used)."""
    model = randomize_bn_statistics(build_resnet(50, norm="bn", preact=True, out_features=["res4", "res5"])).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(x)
        res5 = model.detach_stage("res5")
        assert not any(k.startswith(("layer4", "post_norm")) for k in model.state_dict())
        torch.testing.assert_close(model(x)["res4"], whole["res4"], rtol=0, atol=0)
        torch.testing.assert_close(res5(model(x)["res4"]), whole["res5"], rtol=0, atol=0)
    assert whole["res5"].min() == 0  # the ReLU is there


def test_out_indices_without_features_only_is_refused_not_ignored():
    """It came back as the 1000-class classifier, the feature maps asked for nowhere (timm refuses it)."""
    with pytest.raises(BackboneError, match="out_indices selects feature maps: pass features_only=True with it"):
        create("resnet18", out_indices=(1, 2))
