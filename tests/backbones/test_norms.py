"""Which norm each builder gives, and zero_init_residual only where the zero can train."""

import warnings

import pytest
import torch
from torch import nn

from backbones import (
    BackboneError,
    CifarResNet,
    FrozenBatchNorm2d,
    ResNet,
    build_resnet,
    create,
    resnet18,
    resnet50,
)
from backbones.config import BackboneConfig, build_from_config
from tests.helpers import randomize_bn_statistics

FROZEN_WITHOUT_WEIGHTS = (r"^norm='frozen_bn' without weights: every BatchNorm is the identity and never trains; "
                          r"pass weights= \(or load_weights\(\) before use\), or norm='bn' to train from scratch$")


def normalized_output(model, module, images):
    """Per-channel mean and std of ``module``'s output in a train-mode forward."""
    seen = []
    # A copy: the ReLU after a norm runs in place.
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    model.train()(images)
    handle.remove()
    out = seen[0].transpose(0, 1).flatten(1)
    return out.mean(dim=1), out.std(dim=1)


@pytest.mark.parametrize("build", [lambda: resnet50(), lambda: create("resnet50"), lambda: create("resnet18", shortcut="A"),
                                   lambda: create("resnet18", features_only=True).model],
                         ids=["resnet50", "create", "create_option_A", "features_only"])
def test_factories_without_weights_train_their_batchnorm(build):
    """From scratch a frozen BN is the identity: the factories' nets normalize each batch, as the paper's do."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build()
    assert model.norm == "bn" and isinstance(model.layer1[0].bn1, nn.BatchNorm2d)
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean, std = normalized_output(model, model.layer1[0].bn1, images)
    assert mean.abs().max() < 1e-4 and (std - 1).abs().max() < 0.05  # gamma 1, beta 0: the batch normalized
    assert model.layer1[0].bn1.running_mean.abs().sum() > 0  # and its statistics tracked


def test_factories_with_weights_keep_frozen_bn_at_the_loaded_statistics(tmp_path):
    source = randomize_bn_statistics(build_resnet(18, norm="bn", num_classes=1000))
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    for model in (resnet18(weights=str(tmp_path / "r18.pth")), create("resnet18", weights=str(tmp_path / "r18.pth"))):
        unit = model.layer2[1].bn2
        assert isinstance(unit, FrozenBatchNorm2d)
        assert torch.equal(unit.running_var, source.layer2[1].bn2.running_var)
        model.train()(torch.randn(2, 3, 64, 64))
        assert torch.equal(unit.running_var, source.layer2[1].bn2.running_var)


@pytest.mark.parametrize("build", [lambda: resnet50(norm="frozen_bn"), lambda: create("resnet18", norm="frozen_bn"),
                                   lambda: create("resnet20_cifar", norm="frozen_bn")],
                         ids=["resnet50", "create", "cifar"])
def test_frozen_bn_without_weights_is_one_warning(build):
    with pytest.warns(UserWarning, match=FROZEN_WITHOUT_WEIGHTS) as record:
        model = build()
    assert len(record) == 1 and isinstance(model.bn1, FrozenBatchNorm2d)


def test_the_config_path_keeps_frozen_bn_without_a_warning():
    """The detectors' tests and benchmarks build random-weight backbones with frozen BN on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in (build_resnet(18), build_from_config(BackboneConfig(depth=18, weights=None))):
            assert isinstance(model.layer1[0].bn1, FrozenBatchNorm2d)


@pytest.mark.parametrize("build", [
    lambda: ResNet(18, zero_init_residual=True),
    lambda: resnet50(weights=None, norm="frozen_bn", zero_init_residual=True),
    lambda: build_from_config(BackboneConfig(depth=18, zero_init_residual=True, freeze_at=0), num_classes=10),
    lambda: create("resnet20_cifar", norm="frozen_bn", zero_init_residual=True),
], ids=["ResNet", "resnet50", "config", "cifar"])
def test_zero_init_residual_refuses_a_frozen_norm(build):
    """A frozen BN's scale is a buffer: zeroed, every residual branch would stay dead for good."""
    with warnings.catch_warnings(), pytest.raises(BackboneError) as error:
        warnings.simplefilter("ignore")
        build()
    assert str(error.value) == ("zero_init_residual=True needs a trainable norm: with norm='frozen_bn' every residual "
                                "branch would stay at zero for good; pass norm='bn' (or 'syncbn', 'gn')")


def test_zero_init_residual_with_a_trainable_norm_starts_at_zero_and_trains():
    model = create("resnet50", num_classes=10, zero_init_residual=True)
    last = model.layer1[0].bn3
    assert last.weight.requires_grad and last.weight.abs().sum() == 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()(torch.randn(2, 3, 64, 64))["logits"].square().sum().backward()
    optimizer.step()
    assert last.weight.abs().sum() > 0  # the branch comes alive after one step


def test_a_zero_initialized_stage_is_not_frozen(tmp_path):
    with pytest.raises(BackboneError) as error:
        ResNet(18, norm="bn", zero_init_residual=True, freeze_at=2)
    assert str(error.value) == ("freeze_at=2 freezes layer1.0 with its residual branch at zero (zero_init_residual=True, "
                                "no weights loaded), so it would never train: pass freeze_at=0 or 1, load weights, or "
                                "drop zero_init_residual")
    source = randomize_bn_statistics(build_resnet(18, norm="bn"))
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_resnet(18, weights=str(tmp_path / "r18.pth"), norm="bn", zero_init_residual=True, freeze_at=2)
    assert torch.equal(model.layer1[0].bn2.weight, source.layer1[0].bn2.weight)  # the weights replaced the zero


@pytest.mark.parametrize("build", [lambda **kw: ResNet(50, **kw), lambda **kw: CifarResNet(20, **kw)],
                         ids=["imagenet", "cifar"])
def test_zero_init_residual_is_refused_on_pre_activation_nets_which_have_no_norm_to_zero(build):
    """It did nothing there: every branch kept its random last convolution."""
    with pytest.raises(BackboneError, match="no norm to zero in pre-activation units"):
        build(norm="bn", preact=True, zero_init_residual=True)
