"""benchmarks/bench_cifar.py times the same network on both sides: its plainly written reference is the
paper's CIFAR ResNet, computes our classifier's function, and a training step updates both alike."""

import torch
import torch.nn.functional as F

from tests.helpers import load_benchmark_script


def load_bench():
    return load_benchmark_script("bench_cifar")


def test_the_reference_is_the_papers_resnet_20_and_computes_ours():
    bench = load_bench()
    reference = bench.ReferenceCifarResNet(20)
    # Table 6: 0.27M parameters (269,722 counted by hand in tests/backbones/test_cifar.py).
    assert sum(p.numel() for p in reference.parameters()) == 269_722
    differences = bench.function_differences(bench.our_cifar_classifier(20), reference)
    assert set(differences) == {"train_logits", "gradients", "test_logits"}
    assert max(differences.values()) < 1e-12


def test_a_different_function_is_found():
    """A shortcut that keeps the odd rows and columns instead of the even ones is another function."""
    bench = load_bench()

    class OddPixelShortcut(bench.ZeroPadShortcut):
        def forward(self, x):
            return F.pad(x[:, :, 1::2, 1::2], (0, 0, 0, 0, 0, self.extra_channels))

    reference = bench.ReferenceCifarResNet(20)
    for stage in (reference.layer2, reference.layer3):
        stage[0].downsample = OddPixelShortcut(stage[0].downsample.extra_channels)
    differences = bench.function_differences(bench.our_cifar_classifier(20), reference)
    assert differences["train_logits"] > 1e-3 and differences["test_logits"] > 1e-3


def test_one_training_step_updates_both_nets_alike():
    """Ours through the classifier's own loss (as the trainer runs it), the reference through the cross-entropy
    of its logits: after one SGD step the two hold the same weights and BN statistics."""
    bench = load_bench()
    torch.manual_seed(0)
    ours = bench.our_cifar_classifier(20).double().train()
    reference = bench.ReferenceCifarResNet(20).double().train()
    reference.load_state_dict(ours.backbone.state_dict())
    start = ours.backbone.conv1.weight.detach().clone()
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 9])
    for model, is_ours in ((ours, True), (reference, False)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        bench.training_step(model, optimizer, images, labels, ours=is_ours)
    assert not torch.allclose(ours.backbone.conv1.weight, start)
    for (name, mine), theirs in zip(ours.backbone.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, msg=name)
