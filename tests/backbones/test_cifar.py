"""The CIFAR ResNets against the paper's parameter counts, against the same nets built independently
from torchvision's BasicBlock / Bottleneck and plain torch.nn layers, and their layer-response points."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from backbones import BackboneError, CifarResNet, WeightsError, create, fold_frozen_bn
from tests.helpers import randomize_bn_statistics

WIDTHS = (16, 32, 64)


# -- parameter counts, by hand ----------------------------------------------------------------------------------
def basic_net_parameters(n: int, projections: bool = False, classes: int = 10) -> int:
    """Conv weights (no bias), BN weight and bias, fc weight and bias of a 6n+2 CIFAR net with basic units."""
    total = 3 * 9 * 16 + 2 * 16  # stem conv and its BN
    channels = 16
    for width in WIDTHS:
        for _unit in range(n):
            total += 9 * channels * width + 9 * width * width + 2 * (2 * width)
            if projections and channels != width:  # 1x1 conv and its BN where the shape changes
                total += channels * width + 2 * width
            channels = width
    return total + channels * classes + classes


def preact_bottleneck_parameters(n: int, classes: int = 10) -> int:
    """A 9n+2 pre-activation bottleneck net as in Identity Mappings: the first unit of each stage projects
    (1x1 conv, no BN), every unit normalizes its input (the first unit's input norm is the stem's BN), and
    a last BN precedes the pooling."""
    total = 3 * 9 * 16  # stem conv
    channels = 16
    for width in WIDTHS:
        for unit in range(n):
            total += 2 * channels  # the input BN
            total += channels * width + 9 * width * width + width * 4 * width + 2 * (2 * width)
            if unit == 0:
                total += channels * 4 * width
            channels = 4 * width
    return total + 2 * channels + channels * classes + classes


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Table 6 of the paper: depth -> (n, parameters as printed, in millions)
TABLE_6 = {20: (3, "0.27"), 32: (5, "0.46"), 44: (7, "0.66"), 56: (9, "0.85"), 110: (18, "1.7"), 1202: (200, "19.4")}
EXACT = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


@pytest.mark.parametrize("depth", list(TABLE_6))
def test_parameter_counts_match_table_6(depth):
    n, printed = TABLE_6[depth]
    residual = create(f"resnet{depth}_cifar")
    plain = create(f"resnet{depth}_cifar", plain=True)
    assert parameter_count(residual) == basic_net_parameters(n) == EXACT[depth]
    assert parameter_count(plain) == parameter_count(residual)  # option A adds no parameter
    digits = len(printed.split(".")[1])
    assert f"{EXACT[depth] / 1e6:.{digits}f}" == printed


def test_option_b_adds_the_projections():
    assert parameter_count(create("resnet20_cifar", shortcut="B")) == basic_net_parameters(3, projections=True)
    assert basic_net_parameters(3, projections=True) == 269_722 + (16 * 32 + 64) + (32 * 64 + 128)


def test_preactivation_counts():
    """Pre-act ResNet-164: 1.7M (Identity Mappings). ResNet-1001 as its reference code builds it has
    10,327,706 parameters; the 10.2M printed in that paper is the count without the BN affine
    parameters (10,178,490)."""
    resnet164 = create("resnet164_cifar", preact=True)
    assert resnet164.block == "bottleneck" and resnet164.shortcut == "B"
    assert parameter_count(resnet164) == preact_bottleneck_parameters(18) == 1_703_258
    assert f"{parameter_count(resnet164) / 1e6:.1f}" == "1.7"
    resnet1001 = create("resnet1001_cifar", preact=True)
    assert parameter_count(resnet1001) == preact_bottleneck_parameters(111) == 10_327_706
    bn = sum(p.numel() for m in resnet1001.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert f"{(parameter_count(resnet1001) - bn) / 1e6:.1f}" == "10.2"
    # Basic pre-activation ResNet-110: the input BN of each unit replaces the second BN of the original unit.
    assert parameter_count(create("resnet110_cifar", preact=True)) == basic_net_parameters(18) == 1_727_962


# -- independent constructions ----------------------------------------------------------------------------------
def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class ZeroPadIdentity(nn.Module):
    """Option A written independently: subsampling as a 1x1 max pool, extra channels concatenated zeros."""

    def __init__(self, extra: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra, stride

    def forward(self, x):
        x = F.max_pool2d(x, kernel_size=1, stride=self.stride)
        return torch.cat([x, x.new_zeros(x.shape[0], self.extra, *x.shape[2:])], dim=1)


def reference_shortcut(kind, cin, cout, stride, with_norm=True):
    if kind == "A":
        return ZeroPadIdentity(cout - cin, stride)
    conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout)) if with_norm else conv


def unit_plan(n, expansion=1):
    """(in channels, width, stride) of each unit of the three stages."""
    channels = 16
    for stage, width in enumerate(WIDTHS):
        for unit in range(n):
            yield channels, width, 2 if stage > 0 and unit == 0 else 1
            channels = width * expansion


def head(channels):
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]


def reference_original(n, shortcut="A", plain=False):
    """The paper's CIFAR net: torchvision's BasicBlock for residual units, Conv-BN-ReLU layers for plain ones."""
    layers = [conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU()]
    for cin, width, stride in unit_plan(n):
        if plain:
            layers += [conv3x3(cin, width, stride), nn.BatchNorm2d(width), nn.ReLU(),
                       conv3x3(width, width), nn.BatchNorm2d(width), nn.ReLU()]
            continue
        down = reference_shortcut(shortcut, cin, width, stride) if (stride, cin) != (1, width) else None
        layers.append(torchvision.models.resnet.BasicBlock(cin, width, stride, down))
    return nn.Sequential(*layers, *head(64))


def reference_original_bottleneck(n):
    """Original bottleneck units from torchvision (stride on the 3x3), projections where the shape changes."""
    layers = [conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU()]
    for cin, width, stride in unit_plan(n, expansion=4):
        down = reference_shortcut("B", cin, 4 * width, stride) if (stride, cin) != (1, 4 * width) else None
        layers.append(torchvision.models.resnet.Bottleneck(cin, width, stride, down))
    return nn.Sequential(*layers, *head(256))


class PreActBasicUnit(nn.Module):
    """Full pre-activation basic unit as in fb.resnet.torch's preresnet: a unit that changes the shape
    shares its BN-ReLU with the shortcut; the first unit after the stem has none of its own."""

    def __init__(self, cin, width, stride, shortcut, first):
        super().__init__()
        self.pre = nn.Identity() if first else nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU())
        self.branch = nn.Sequential(conv3x3(cin, width, stride), nn.BatchNorm2d(width), nn.ReLU(),
                                    conv3x3(width, width))
        changes = (stride, cin) != (1, width)
        self.skip = reference_shortcut(shortcut, cin, width, stride, with_norm=False) if changes else None

    def forward(self, x):
        pre = self.pre(x)
        return self.branch(pre) + (x if self.skip is None else self.skip(pre))


class PreActBottleneckUnit(nn.Module):
    """resnet-1k-layers' unit: BN-ReLU-conv1x1 (with the stride), BN-ReLU-conv3x3, BN-ReLU-conv1x1; a unit
    that changes the shape applies its first BN-ReLU to both paths and projects with a 1x1 conv."""

    def __init__(self, cin, width, stride):
        super().__init__()
        self.changes = (stride, cin) != (1, 4 * width)
        self.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                    conv3x3(width, width), nn.BatchNorm2d(width), nn.ReLU(),
                                    nn.Conv2d(width, 4 * width, 1, bias=False))
        self.skip = nn.Conv2d(cin, 4 * width, 1, stride, bias=False) if self.changes else None

    def forward(self, x):
        pre = self.pre(x)
        return self.branch(pre) + (self.skip(pre) if self.changes else x)


def reference_preact(n, bottleneck=False, shortcut="A"):
    if bottleneck:  # resnet-1k-layers: a bare stem conv, the first unit's BN-ReLU normalizes it
        units = [PreActBottleneckUnit(cin, width, stride) for cin, width, stride in unit_plan(n, expansion=4)]
        return nn.Sequential(conv3x3(3, 16), *units, nn.BatchNorm2d(256), nn.ReLU(), *head(256))
    units = [PreActBasicUnit(cin, width, stride, shortcut, first=index == 0)
             for index, (cin, width, stride) in enumerate(unit_plan(n))]
    return nn.Sequential(conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU(), *units, nn.BatchNorm2d(64), nn.ReLU(),
                         *head(64))


def copy_by_position(ours: nn.Module, reference: nn.Module) -> None:
    """Give the reference our parameters and buffers, entry by entry in registration order."""
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert len(ours_state) == len(reference_state)
    for (name, mine), (ref_name, theirs) in zip(ours_state.items(), reference_state.items()):
        assert mine.shape == theirs.shape, (name, ref_name)
        theirs.copy_(mine)


CASES = {
    "residual_A": (dict(name="resnet20_cifar"), lambda: reference_original(3, "A")),
    "residual_B": (dict(name="resnet20_cifar", shortcut="B"), lambda: reference_original(3, "B")),
    "plain": (dict(name="resnet20_cifar", plain=True), lambda: reference_original(3, plain=True)),
    "preact_basic": (dict(name="resnet20_cifar", preact=True), lambda: reference_preact(3)),
    "preact_basic_B": (dict(name="resnet20_cifar", preact=True, shortcut="B"), lambda: reference_preact(3, shortcut="B")),
    # Two bottleneck units per stage: ResNet-164's architecture with n = 2 instead of 18.
    "preact_bottleneck": (dict(name="resnet20_cifar", preact=True, block="bottleneck"),
                          lambda: reference_preact(2, bottleneck=True)),
    "original_bottleneck": (dict(name="resnet20_cifar", block="bottleneck", stride_in_1x1=False),
                            lambda: reference_original_bottleneck(2)),
}


def build_pair(case, seed=0):
    kwargs, make_reference = CASES[case]
    kwargs = dict(kwargs)
    torch.manual_seed(seed)
    ours = randomize_bn_statistics(create(kwargs.pop("name"), **kwargs), seed=seed).double()
    reference = make_reference().double()
    with torch.no_grad():
        copy_by_position(ours, reference)
    return ours, reference


@pytest.mark.parametrize("case", list(CASES))
def test_matches_independent_construction(case):
    """Eval-mode logits with random BN statistics, then one training step: batch-statistics logits,
    updated running statistics and every gradient, all in float64."""
    ours, reference = build_pair(case)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x)["logits"], reference.eval()(x))
    labels = torch.tensor([0, 3, 7, 9])
    ours.train(), reference.train()
    ours_logits, reference_logits = ours(x)["logits"], reference(x)
    torch.testing.assert_close(ours_logits, reference_logits)
    F.cross_entropy(ours_logits, labels).backward()
    F.cross_entropy(reference_logits, labels).backward()
    for (name, mine), theirs in zip(ours.named_parameters(), reference.parameters()):
        assert theirs.grad is not None and theirs.grad.abs().sum() > 0, name
        torch.testing.assert_close(mine.grad, theirs.grad, msg=name)
    for mine, theirs in zip(ours.buffers(), reference.buffers()):
        torch.testing.assert_close(mine, theirs)


# -- the layer-response points (Fig. 7) --------------------------------------------------------------------------
def hooked_outputs(modules, x, model):
    outputs = []
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().clone())) for m in modules]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return outputs


@pytest.mark.parametrize("case", ["residual_A", "plain", "preact_basic", "preact_bottleneck"])
def test_response_points_are_the_3x3_layers_in_order(case):
    """Post-activation nets: the BN after each 3x3 conv (in the reference, its BNs in module order, since
    the shortcuts have none); pre-activation nets: the stem's BN, then the output of each 3x3 conv."""
    ours, reference = build_pair(case, seed=2)
    ours.eval(), reference.eval()
    if case.startswith("preact"):
        modules = [m for m in reference.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)][1:]
        modules.insert(0, next(m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)))
    else:
        modules = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
    points = ours.response_modules()
    assert len(points) == len(modules) == (19 if case != "preact_bottleneck" else 1 + 3 * 2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = hooked_outputs([module for _, module in points], x, lambda t: ours(t))
    expected = hooked_outputs(modules, x, reference)
    assert len(got) == len(expected) == len(points)  # each point runs once per forward
    for index, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, msg=f"response {index}: {points[index][0]}")


def test_response_point_names_for_the_paper_depths():
    names = [name for name, _ in create("resnet20_cifar").response_modules()]
    assert names[:3] == ["bn1", "layer1.0.bn1", "layer1.0.bn2"] and names[-1] == "layer3.2.bn2"
    assert len(create("resnet56_cifar", plain=True).response_modules()) == 55
    assert len(create("resnet110_cifar").response_modules()) == 109
    assert [name for name, _ in create("resnet164_cifar").response_modules()][:2] == ["bn1", "layer1.0.bn2"]


def test_folded_net_gives_the_same_responses():
    model = randomize_bn_statistics(create("resnet20_cifar")).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    before = hooked_outputs([m for _, m in model.response_modules()], x, model)
    fold_frozen_bn(model)
    after = hooked_outputs([m for _, m in model.response_modules()], x, model)
    assert all(isinstance(m, nn.Identity) for _, m in model.response_modules())
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- features, options, loading -------------------------------------------------------------------------------
def test_features_only_gives_the_stage_maps():
    ours, reference = build_pair("residual_A", seed=5)
    pyramid = create("resnet20_cifar", features_only=True).double()
    pyramid.model.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("fc.")})
    pyramid.eval(), reference.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        maps = pyramid(x)
        expected = [reference[:3](x), reference[:6](x), reference[:9](x), reference[:12](x)]
    assert pyramid.feature_info.channels() == [16, 16, 32, 64]
    assert pyramid.feature_info.reduction() == [1, 1, 2, 4]
    assert pyramid.feature_info.module_name() == ["model.act1", "model.layer1", "model.layer2", "model.layer3"]
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want)
    last_two = create("resnet20_cifar", features_only=True, out_indices=2)
    assert last_two.feature_info.channels() == [32, 64] and last_two.feature_info.out_indices == (-2, -1)
    with pytest.raises(BackboneError, match=r"give integers in 0..3 \(0 = act1 at stride 1, 1..3 = stage1..stage3"):
        create("resnet20_cifar", features_only=True, out_indices=(0, 4))


def test_preact_features_are_post_activated_after_the_last_stage():
    model = create("resnet20_cifar", preact=True, out_features=["stage2", "stage3"], num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out["stage3"], F.relu(model.post_norm(model.layer3(out["stage2"]))))


def test_defaults_stride_placement_and_he_initialization():
    basic = create("resnet20_cifar")
    assert basic.shortcut == "A" and basic.norm == "bn" and basic.fc.out_features == 10
    assert list(basic(torch.randn(1, 3, 32, 32))) == ["logits"]
    bottleneck = create("resnet164_cifar")
    assert bottleneck.block == "bottleneck" and bottleneck.layer2[0].conv1.stride == (2, 2)
    assert bottleneck.layer2[0].conv2.stride == (1, 1)
    assert create("resnet164_cifar", stride_in_1x1=False).layer2[0].conv2.stride == (2, 2)
    assert create("resnet29_cifar").block == "bottleneck"  # 9n+2 only
    assert create("resnet32_cifar", num_classes=100).fc.out_features == 100
    # He et al.'s initialization: std sqrt(2 / (3 * 3 * 64)) for the 64-filter 3x3 convs.
    weight = basic.layer3[1].conv1.weight
    assert abs(weight.std().item() / (2 / (9 * 64)) ** 0.5 - 1) < 0.03


def test_norm_options_and_freezing():
    bn_count = parameter_count(create("resnet20_cifar"))
    assert parameter_count(create("resnet20_cifar", norm="gn")) == bn_count
    with pytest.warns(UserWarning, match="norm='frozen_bn' without weights"):
        frozen = create("resnet20_cifar", norm="frozen_bn")
    bn_affine = 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    assert parameter_count(frozen) == bn_count - bn_affine
    model = create("resnet20_cifar", freeze_at=2)
    assert not any(p.requires_grad for p in [*model.conv1.parameters(), *model.layer1.parameters()])
    assert all(p.requires_grad for p in model.layer2.parameters())
    zero = create("resnet20_cifar", zero_init_residual=True)
    assert all(unit.bn2.weight.abs().sum() == 0 for stage in (zero.layer1, zero.layer2, zero.layer3) for unit in stage)


def test_channels_last_gives_the_same_logits():
    model = randomize_bn_statistics(create("resnet20_cifar")).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = model(x)["logits"]
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))["logits"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_weights_round_trip(tmp_path):
    model = randomize_bn_statistics(create("resnet20_cifar", preact=True)).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    loaded = create("resnet20_cifar", preact=True, weights=str(tmp_path / "w.pth")).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["logits"], model(x)["logits"], rtol=0, atol=0)
    with pytest.raises(WeightsError, match="does not fit"):
        create("resnet32_cifar", weights=str(tmp_path / "w.pth"))


@pytest.mark.parametrize("call, message", [
    (lambda: create("resnet21_cifar"), r"no CIFAR ResNet of depth 21 with bottleneck units: the depth is 6n\+2"),
    (lambda: create("resnet20_cifar", block="bottle"), "unknown CIFAR block 'bottle': choose basic or bottleneck"),
    (lambda: create("resnet29_cifar", block="basic"), "no CIFAR ResNet of depth 29 with basic units"),
    (lambda: create("resnet_cifar"), r"unknown model 'resnet_cifar'.*resnet\{depth\}_cifar"),
    (lambda: create("resnet20_cifar", shortcut="D"), "unknown shortcut option 'D'"),
    (lambda: create("resnet20_cifar", freeze_at=5), "freeze_at must be between 0 and 4"),
    (lambda: create("resnet20_cifar", norm="ln"), "unknown norm 'ln'"),
    (lambda: create("resnet20_cifar", out_features=["res5"]), r"unknown out_features \['res5'\]: choose from act1"),
    (lambda: create("resnet20_cifar", plain=True, zero_init_residual=True), "zero_init_residual=True needs residual"),
    (lambda: create("resnet20_cifar", weights="torchvision:IMAGENET1K_V1"), "no weights named 'torchvision:"),
    (lambda: CifarResNet(20, base_width=0), "base_width must be a positive integer"),
])
def test_bad_arguments_say_what_to_choose(call, message):
    with pytest.raises(BackboneError, match=message):
        call()
