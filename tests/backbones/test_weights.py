"""Loading weights files: formats, wrappers, names resolved through caches, and readable failures."""

import io
import os
import pickle
import re
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from backbones import WeightsError, build_resnet, load_weights, resnet18
from backbones.weights import caffe2_name_to_torch, read_state_dict


@pytest.fixture(scope="module")
def tv18():
    model = torchvision.models.resnet18(weights=None)
    return {k: v for k, v in model.state_dict().items()}


def assert_loaded(model, state):
    own = model.state_dict()
    assert torch.equal(own["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    assert torch.equal(own["layer1.0.bn1.running_var"], state["layer1.0.bn1.running_var"])


PREFIXES = {"module_prefix": "module.", "lightning": "model.", "compiled": "_orig_mod.",
            "compiled_ddp": "module._orig_mod.", "detector": "backbone.body."}


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "safetensors", *PREFIXES])
def test_file_formats_and_wrappers(tv18, tmp_path, wrap):
    """Wrappers of the tensors: checkpoint dicts, and the prefixes of DDP, a Lightning module (whose
    checkpoint also holds the optimizer), torch.compile, both, and a torchvision detector."""
    if wrap == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in tv18.items()}, path)
    else:
        path = tmp_path / "w.pth"
        prefixed = {f"{PREFIXES.get(wrap, '')}{k}": v for k, v in tv18.items()}
        obj = {"state_dict": {"state_dict": tv18, "epoch": 3}, "model": {"model": tv18},
               "lightning": {"state_dict": prefixed, "epoch": 3, "optimizer_states": []}}.get(wrap, prefixed)
        torch.save(obj, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fc.* is dropped quietly when there is no classifier
        model = resnet18(weights=str(path))
    assert_loaded(model, tv18)


def test_a_file_of_other_names_says_what_its_names_look_like(tv18, tmp_path):
    """Names the loader cannot map (detectron2's, say): every model tensor "missing from the file"
    did not tell a wrong file from a naming issue."""
    renamed = {f"bottom_up.{k.replace('layer', 'res')}": v for k, v in tv18.items()}
    torch.save(renamed, tmp_path / "d2.pth")
    with pytest.raises(WeightsError) as error:
        resnet18(weights=str(tmp_path / "d2.pth"))
    assert str(error.value).endswith(
        "(and 92 more); most of the model's tensors are not in the file under their names (95 of the file's are "
        "named otherwise, e.g. 'res1.0.bn1.bias', where the model has e.g. 'layer1.0.bn1.bias'): a file of another "
        "network, or one whose names need renaming")


def test_classifier_loaded_when_present(tv18, tmp_path):
    torch.save(tv18, tmp_path / "w.pth")
    model = resnet18(weights=str(tmp_path / "w.pth"), num_classes=1000)
    assert torch.equal(model.fc.weight, tv18["fc.weight"])


def test_wrong_architecture_lists_mismatched_keys(tv18, tmp_path):
    torch.save(tv18, tmp_path / "r18.pth")
    with pytest.raises(WeightsError) as error:
        build_resnet(50, weights=str(tmp_path / "r18.pth"))
    message = str(error.value)
    assert "r18.pth does not fit resnet50" in message
    assert "layer1.0.conv1.weight: file [64, 64, 3, 3] vs model [64, 64, 1, 1]" in message
    assert "\n" not in message


def test_missing_file_and_non_tensor_file(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found: .*nothere.pth"):
        resnet18(weights=str(tmp_path / "nothere.pth"))
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read .*broken.pth"):
        resnet18(weights=str(tmp_path / "broken.pth"))
    # Read directly (tools/convert_weights.py): a missing file is not called damaged.
    with pytest.raises(WeightsError, match=r"^weights file not found: .*nothere.pth$"):
        read_state_dict(str(tmp_path / "nothere.pth"))
    # A misspelt scheme was "weights file not found: torchvison:IMAGENET1K_V2".
    with pytest.raises(WeightsError) as error:
        resnet18(weights="torchvison:IMAGENET1K_V2")
    assert str(error.value) == ("weights 'torchvison:IMAGENET1K_V2': unknown name scheme 'torchvison:' "
                                "(torchvision:NAME or timm:NAME, e.g. torchvision:IMAGENET1K_V2; anything else is a "
                                "file path)")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_files_that_would_run_code_are_refused(tmp_path):
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "evil": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        resnet18(weights=str(tmp_path / "evil.pth"))


class Prints:
    """Unpickling this calls print: a stand-in for code hidden in a weights file."""

    def __reduce__(self):
        return (print, ("unpickled",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_file_holding_code_is_refused_as_unsafe_not_called_damaged(tmp_path, capsys, zip_format):
    path = tmp_path / "code.pth"
    torch.save({"conv1.weight": torch.zeros(1), "hook": Prints()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(WeightsError) as error:
        resnet18(weights=str(path))
    message = str(error.value)
    assert re.fullmatch(re.escape(f"{path} was refused as unsafe (Unsupported global: GLOBAL ") + r"(builtins\.)?print"
                        + re.escape(" was not an allowed global by default): it holds pickled objects other than "
                                    "tensors, which could run code when loaded. ") + ".*", message), message
    assert "damaged" not in message and "torch.save(model.state_dict(), ...)" in message and "\n" not in message
    assert "unpickled" not in capsys.readouterr().out


def test_torchvision_name_uses_hub_cache(tv18, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    expected = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    with pytest.raises(WeightsError) as error:
        resnet18(weights="torchvision:IMAGENET1K_V1")
    assert str(expected) in str(error.value) and "weights=/path" in str(error.value)
    expected.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tv18, expected)
    assert_loaded(resnet18(weights="torchvision:IMAGENET1K_V1"), tv18)
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        resnet18(weights="torchvision:IMAGENET9K")


def test_timm_name_offline_names_the_cache(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(WeightsError, match="resnet50.a1_in1k.*Hugging Face cache.*weights=/path"):
        build_resnet(50, weights="timm:resnet50.a1_in1k")


def test_timm_name_uses_cached_file(tmp_path, monkeypatch):
    import huggingface_hub
    import timm

    reference = timm.create_model("resnet18", pretrained=False)
    save_file(reference.state_dict(), tmp_path / "model.safetensors")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, filename: str(tmp_path / filename) if repo == "timm/resnet18.a1_in1k" else None)
    model = resnet18(weights="timm:resnet18.a1_in1k")
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def detectron_blobs(model):
    """Write a torchvision-named model in Detectron's Caffe2 blob names."""
    blobs = {}
    names = {}
    for name in ["conv1_w", "res_conv1_bn_s", "res_conv1_bn_b"]:
        names[name] = caffe2_name_to_torch(name)
    for stage, layer in enumerate([model.layer1, model.layer2, model.layer3, model.layer4], start=2):
        for unit in range(len(layer)):
            for branch in ["2a", "2b", "2c"] + (["1"] if unit == 0 else []):
                for suffix in ["_w", "_bn_s", "_bn_b"]:
                    key = f"res{stage}_{unit}_branch{branch}{suffix}"
                    names[key] = caffe2_name_to_torch(key)
    state = model.state_dict()
    for blob, torch_name in names.items():
        blobs[blob] = state[torch_name].numpy()
    return blobs


def test_detectron_pickle_needs_trust_and_loads(tmp_path):
    source = build_resnet(50, norm="bn", stride_in_1x1=True)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"blobs": detectron_blobs(source)}, handle)
    with pytest.raises(WeightsError, match="trust_pickle=True"):
        build_resnet(50, weights=str(path), stride_in_1x1=True)
    model = build_resnet(50, weights=str(path), trust_pickle=True, stride_in_1x1=True).eval()
    # An affine channel (scale s, bias b) becomes a frozen BN computing exactly s*x+b.
    x = torch.randn(1, 64, 4, 4)
    bn = model.layer1[0].bn1
    expected = x * source.layer1[0].bn1.weight.reshape(1, -1, 1, 1) + source.layer1[0].bn1.bias.reshape(1, -1, 1, 1)
    assert torch.allclose(bn(x), expected, atol=1e-6)
    assert np.allclose(model.layer3[5].conv3.weight.detach().numpy(), source.layer3[5].conv3.weight.detach().numpy())
    # MSRA's bottlenecks stride in the 1x1: loaded into the 3x3 placement they fit and compute another net.
    with pytest.warns(UserWarning, match=r"R-50.pkl: the MSRA ResNets of Detectron's .pkl files stride in the first "
                                         r"1x1 .*set stride_in_1x1=true"):
        build_resnet(50, weights=str(path), trust_pickle=True)


def test_torchvision_and_timm_names_refuse_the_1x1_stride_placement():
    for spec in ("torchvision:IMAGENET1K_V1", "timm:resnet50.a1_in1k"):
        with pytest.raises(WeightsError, match=rf"^{spec}: torchvision's and timm's ResNets stride in the 3x3 "):
            build_resnet(50, weights=spec, stride_in_1x1=True)


@pytest.mark.parametrize("saved, build, differing", [
    ({"plain": True}, {}, "plain=True there, False here"),
    ({}, {"plain": True}, "plain=False there, True here"),  # False is recorded as much as True
    ({}, {"stride_in_1x1": True}, "stride_in_1x1=False there, True here"),
    ({"stride_in_1x1": True}, {}, "stride_in_1x1=True there, False here"),
    ({"preact": True, "shortcut": "A"}, {}, "preact=True there, False here; shortcut=A there, B here"),
])
def test_a_trainers_checkpoint_loads_only_into_the_network_its_config_names(tmp_path, saved, build, differing):
    """A plain net and a ResNet of option A, or two stride placements, share every tensor: a trainer's
    checkpoint keeps its config, which tells them apart."""
    import yaml
    model = build_resnet(50, **saved)  # the tensors of the network the config names
    backbone = {"depth": 50, "plain": False, "preact": False, "shortcut": "B", "base_width": 64,
                "stride_in_1x1": False, **saved}
    path = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "config": yaml.safe_dump({"model": {"backbone": backbone}})}, path)
    with pytest.raises(WeightsError) as error:
        build_resnet(50, weights=str(path), **build)
    assert str(error.value) == (f"{path} was trained as another network ({differing}): build the network its config "
                                f"(model.backbone) describes")
    if saved and "preact" not in saved:
        build_resnet(50, weights=str(path), **saved)  # the network it names loads


def test_torchvision_weights_of_a_depth_it_does_not_publish_are_one_line():
    with pytest.raises(WeightsError, match=r"^torchvision publishes no resnet200 weights: give a weights file$"):
        build_resnet(200, weights="torchvision:IMAGENET1K_V1")


# Detectron's (Caffe2) blob names of a ResNet and their torchvision names, written from Detectron's
# naming, not by the mapping under test.
DETECTRON_NAMES = {
    "conv1_w": "conv1.weight",
    "res_conv1_bn_s": "bn1.weight", "res_conv1_bn_b": "bn1.bias",
    "res2_0_branch2a_w": "layer1.0.conv1.weight",
    "res2_0_branch2a_bn_s": "layer1.0.bn1.weight", "res2_0_branch2a_bn_b": "layer1.0.bn1.bias",
    "res2_0_branch2b_w": "layer1.0.conv2.weight",
    "res2_2_branch2c_w": "layer1.2.conv3.weight",
    "res3_0_branch1_w": "layer2.0.downsample.0.weight",
    "res3_0_branch1_bn_s": "layer2.0.downsample.1.weight", "res3_0_branch1_bn_b": "layer2.0.downsample.1.bias",
    "res5_2_branch2c_bn_s": "layer4.2.bn3.weight",
    "fc1000_w": "fc.weight", "fc1000_b": "fc.bias",
}


@pytest.mark.parametrize("blob, expected", sorted(DETECTRON_NAMES.items()))
def test_detectron_blob_names_map_to_torchvision_names(blob, expected):
    assert caffe2_name_to_torch(blob) == expected



# -- weights of another configuration of the same family ----------------------------------------------
@pytest.mark.parametrize("build, count, hint", [
    ({"shortcut": "A"}, 15, "projection shortcuts, where this one has option A or none: shortcut='B' or 'C', "
                            "plain=False"),
    ({"plain": True}, 15, "projection shortcuts, where this one has option A or none: shortcut='B' or 'C', "
                          "plain=False"),
    ({"norm": "gn"}, 40, "BatchNorm statistics, where this one has GroupNorm: norm='bn' or 'frozen_bn'"),
], ids=["option_A", "plain", "gn"])
def test_weights_of_another_configuration_are_refused(tv18, tmp_path, build, count, hint):
    """Each tensor the net has is in the file with its shape: only the file's extras tell that it was
    trained as another network (15 = 3 projections of conv, BN weight, bias, mean, var; 40 = 20 BN statistics)."""
    torch.save(tv18, tmp_path / "tv18.pth")
    with pytest.raises(WeightsError) as error:
        resnet18(weights=str(tmp_path / "tv18.pth"), **build)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'tv18.pth'} holds {count} tensors that resnet18 of these settings lacks, e.g. ")
    assert message.endswith(f"they are the weights of another network ({hint}); build the network they were trained "
                            f"as (model.backbone in a config)")


def test_weights_of_a_deeper_net_are_refused(tmp_path):
    """ResNet-34 holds every tensor of ResNet-18 with its shape, and 8 more units."""
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "tv34.pth")
    with pytest.raises(WeightsError, match=r"holds 80 tensors that resnet18 of these settings lacks, e\.g\. "
                                           r"layer1\.2\.bn1\.bias, .*\(units or norms this one lacks: another "
                                           r"depth, or preact\)"):
        resnet18(weights=str(tmp_path / "tv34.pth"))


def test_extras_outside_the_network_still_load_with_a_warning(tv18, tmp_path):
    """A larger file's other parts, and a stage the model has detached (a C4 head's res5), are not another
    network: they are warned of and the rest loads."""
    torch.save({**tv18, "rpn.head.weight": torch.ones(3)}, tmp_path / "extra.pth")
    with pytest.warns(UserWarning, match=r"extra\.pth: 1 entries not used by the model, e\.g\. rpn\.head\.weight$"):
        model = resnet18(weights=str(tmp_path / "extra.pth"))
    assert_loaded(model, tv18)
    trunk = build_resnet(18, out_features=["res4"])
    trunk.detach_stage("res5")
    torch.save(tv18, tmp_path / "tv18.pth")
    with pytest.warns(UserWarning, match=r"tv18\.pth: 25 entries not used by the model, e\.g\. layer4\.0\.bn1\.bias"):
        load_weights(trunk, str(tmp_path / "tv18.pth"))
    assert_loaded(trunk, tv18)


def test_a_checkpoint_of_another_norm_names_it(tmp_path):
    import yaml
    source = build_resnet(18, norm="bn")
    path = tmp_path / "model_final.pth"
    config = yaml.safe_dump({"model": {"backbone": {"depth": 18, "norm": "bn"}}})
    torch.save({"model": source.state_dict(), "config": config}, path)
    with pytest.raises(WeightsError, match=r"^\S+model_final\.pth was trained as another network \(norm=bn there, gn "
                                           r"here\): build the network its config \(model.backbone\) describes$"):
        resnet18(weights=str(path), norm="gn")
    loaded = resnet18(weights=str(path))  # frozen_bn: the same statistics, fixed
    assert torch.equal(loaded.layer3[0].bn2.running_var, source.layer3[0].bn2.running_var)


# -- downloads --------------------------------------------------------------------------------------------
class Served(io.BytesIO):
    """What torch.hub's urlopen returns, serving ``data``."""

    def info(self):
        size = str(len(self.getvalue()))
        return type("Headers", (), {"get_all": lambda _self, key: [size]})()

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def test_torchvision_download_on_a_fresh_machine(tv18, tmp_path, monkeypatch):
    """No $TORCH_HOME/hub/checkpoints yet: the file is downloaded there and its hash checked."""
    buffer = io.BytesIO()
    torch.save(tv18, buffer)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "fresh"))
    monkeypatch.setattr(torch.hub, "urlopen", lambda request, *a, **k: Served(buffer.getvalue()))
    with pytest.raises(WeightsError, match=r"^torchvision weights resnet18 IMAGENET1K_V1: the download from "
                                           r"https://\S+/resnet18-f37072fd\.pth is damaged \(invalid hash value"):
        resnet18(weights="torchvision:IMAGENET1K_V1")  # these bytes are not the published file
    monkeypatch.setattr(torch.hub, "HASH_REGEX", re.compile(r"(?!)"))  # a name without a hash: nothing to check
    assert_loaded(resnet18(weights="torchvision:IMAGENET1K_V1"), tv18)
    assert (tmp_path / "fresh" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()


def test_torchvision_download_offline_gives_the_reason(tmp_path, monkeypatch):
    from urllib.error import URLError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", lambda *a, **k: (_ for _ in ()).throw(URLError("no route to host")))
    with pytest.raises(WeightsError, match=r"^torchvision weights resnet18 IMAGENET1K_V1 are not cached at \S+ and "
                                           r"could not be downloaded \(<urlopen error no route to host>\): copy the "
                                           r"file there, or pass weights=/path/to/file\.pth$"):
        resnet18(weights="torchvision:IMAGENET1K_V1")


def test_timm_names_without_timm_installed(tmp_path, monkeypatch):
    import huggingface_hub
    import timm

    reference = timm.create_model("resnet18", pretrained=False)
    save_file(reference.state_dict(), tmp_path / "model.safetensors")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, filename: str(tmp_path / filename) if repo == "timm/resnet18.a1_in1k" else None)
    model = resnet18(weights="timm:resnet18.a1_in1k")  # a cached file needs no timm
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(WeightsError, match=r"^timm weights resnet50\.a1_in1k are not in the Hugging Face cache \(\S+\) "
                                           r"and cannot be downloaded: pip install timm \(not installed here\), or "
                                           r"pass weights=/path/to/model\.safetensors$"):
        build_resnet(50, weights="timm:resnet50.a1_in1k")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(WeightsError, match=r"^weights='timm:resnet50\.a1_in1k' need huggingface_hub: pip install timm "
                                           r"\(not installed here\), or pass weights=/path/to/model\.safetensors$"):
        build_resnet(50, weights="timm:resnet50.a1_in1k")
