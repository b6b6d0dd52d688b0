"""The toolkit installed as a user installs it, and its dependency groups.

A wheel is built from the tree as a user builds one (``pip wheel .``: the build backend comes from
the package index) and installed, without its sources, into a fresh virtualenv whose third-party
packages are this environment's (a .pth file: nothing of them is copied or downloaded); its console
scripts then run from an empty folder that holds modules named as a user's own project names them.
Those tests are part of `make test`; `make packaging` runs them alone, and ``-m "not packaging"``
leaves them out (offline, where the build backend cannot be fetched).

Imports blocked in a subprocess stand for packages that are not installed: ``import backbones``
needs torch and torchvision only, and a command that needs an optional package says which extra
installs it.
"""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from detection.data.shapes import generate_split
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR, subprocess_env

USER_MODULES = ("engine", "utils", "transforms")
# The third-party packages of the extras, and their own imports that no torch-only user has.
OPTIONAL = ("cv2", "albumentations", "pycocotools", "omegaconf", "yaml", "tensorboard", "timm", "tqdm",
            "matplotlib", "onnx", "onnxruntime", "onnxscript", "faster_coco_eval", "huggingface_hub", "wandb", "mlflow")


def run(command: list[str], cwd, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("wheel")
    result = run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-q",
                  "-w", str(folder)], cwd=folder, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    (name,) = [name for name in os.listdir(folder) if name.endswith(".whl")]
    return str(folder / name)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh virtualenv with the wheel installed and this environment's packages on its path:
    (its bin folder, an empty working folder holding engine.py, utils.py and transforms.py, env)."""
    root = tmp_path_factory.mktemp("venv")
    assert run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root, env=os.environ).returncode == 0
    python = str(root / "bin" / "python")
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root,
               env=os.environ).stdout.strip()
    # A path line adds the directory alone: the editable install's finder there is not run.
    with open(os.path.join(site, "dependencies.pth"), "w", encoding="utf-8") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    result = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
                 cwd=root, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    work = tmp_path_factory.mktemp("user_project")
    for name in USER_MODULES:
        (work / f"{name}.py").write_text(f"raise ImportError('the project-local {name}.py was imported')\n")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    return root / "bin", work, env


@pytest.mark.packaging
def test_the_wheel_holds_the_packages_configs_and_tools_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"resnet_ops", "backbones", "resnet_engine", "detection", "classification", "localization",
                    "resnet_configs", "resnet_tools"}
    assert "resnet_configs/shapes.yaml" in names and "resnet_tools/train_det.py" in names
    assert any(name.startswith("resnet_ops/csrc/") and name.endswith(".c") for name in names)
    assert not [name for name in names if name.split("/")[0] in ("tests", "datasets", "output", "tools", "configs")]


def test_every_tool_has_a_console_script():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        scripts = tomllib.load(handle)["project"]["scripts"]
    tools = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "tools"))
                   if name.endswith(".py") and name != "__init__.py")
    assert sorted(target.split(":")[0].split(".")[1] for target in scripts.values()) == tools
    assert all(target.endswith(":cli") for target in scripts.values())
    assert all(name.startswith("resnet-") for name in scripts)


@pytest.mark.packaging
def test_installed_commands_run_from_an_empty_folder(venv, tmp_path):
    bin_dir, work, env = venv
    python = str(bin_dir / "python")
    result = run([python, "-c", "import detection, resnet_configs, resnet_tools, backbones\n"
                                "print(detection.__file__, resnet_configs.__file__, resnet_tools.__file__)"],
                 cwd=work, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(path.startswith(str(bin_dir.parent)) for path in result.stdout.split()), result.stdout

    result = run([str(bin_dir / "resnet-train-det"), "--help"], cwd=work, env=env)
    assert result.returncode == 0 and result.stdout.startswith("usage: resnet-train-det"), result.stderr[-2000:]

    result = run([python, "-m", "detection", "--help"], cwd=work, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resnet-train-det" in result.stdout and "resnet-export" in result.stdout
    assert "python tools/" not in result.stdout  # no source checkout here

    result = run([python, "-c", "from backbones import resnet101; print(sum(p.numel() for p in resnet101().parameters()))"],
                 cwd=work, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    from backbones import resnet101  # the same network built from the source tree

    assert int(result.stdout) == sum(p.numel() for p in resnet101().parameters())


@pytest.mark.packaging
def test_installed_trainer_reads_a_packaged_config_by_name(venv, tmp_path):
    """`resnet-train-det --cfg shapes.yaml` from a folder without configs/: the shipped file."""
    bin_dir, work, env = venv
    generate_split(str(tmp_path / "data"), "train", 4, seed=1)
    generate_split(str(tmp_path / "data"), "val", 2, seed=1)
    data = tmp_path / "data"
    result = run([str(bin_dir / "resnet-train-det"), "--cfg", "shapes.yaml", f"output_dir={tmp_path / 'run'}",
                  *TINY_DETECTOR, "solver.max_iter=2", "data.synthetic=''",
                  f"data.train.ann_file={data}/annotations/instances_train.json", f"data.train.img_dir={data}/train",
                  f"data.test.ann_file={data}/annotations/instances_val.json", f"data.test.img_dir={data}/val"],
                 cwd=work, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model_final.pth").is_file()
    assert "AP" in json.loads((tmp_path / "run" / "metrics.json").read_text())["bbox"]
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "arch: fpn" in saved and "base_width: 16" in saved  # shapes.yaml's design, with the overrides


# -- dependency groups --------------------------------------------------------------------------------
BLOCKER = """
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def run_blocked(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", BLOCKER.format(blocked=set(blocked)) + code], cwd=ROOT,
               env=subprocess_env(OMP_NUM_THREADS="1"))


def test_each_optional_module_names_an_extra_that_installs_it():
    """resnet_engine.extras' table against pyproject.toml: the message would otherwise send a user to
    an extra that does not bring the package (timm's own huggingface_hub comes with timm)."""
    tomllib = pytest.importorskip("tomllib")
    from resnet_engine.extras import OPTIONAL_MODULES

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        extras = tomllib.load(handle)["project"]["optional-dependencies"]
    listed = {extra: {item.split(">=")[0].lower() for item in items} for extra, items in extras.items()}
    for module, (package, extra) in OPTIONAL_MODULES.items():
        assert package.lower() in listed[extra] or (package, extra) == ("huggingface_hub", "detection"), module
    assert set(OPTIONAL) == set(OPTIONAL_MODULES)


def test_backbones_need_torch_and_torchvision_only():
    code = ("import torch, backbones\n"
            "net = backbones.create('resnet50', out_features=['res5'])\n"
            "print(tuple(net(torch.randn(1, 3, 64, 64))['res5'].shape))\n"
            "print(sum(p.numel() for p in backbones.create('resnet56_cifar').parameters()))\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(OPTIONAL)!r}))\n")
    result = run_blocked(OPTIONAL, code)
    assert result.returncode == 0, result.stderr[-3000:]
    shape, cifar_params, loaded = result.stdout.split("\n")[:3]
    assert shape == "(1, 2048, 2, 2)" and loaded == "[]"
    assert round(int(cifar_params) / 1e6, 2) == 0.85  # ResNet-56 of the paper's Table 6: 0.85M


@pytest.mark.parametrize("blocked, argv, message", [
    (("cv2",), ["tools/train_det.py", "solver.max_iter=1"],
     "error: this command needs opencv-python-headless, which is not installed: pip install 'resnet-detection[detection]'"),
    (("matplotlib",), ["tools/plot_logs.py", "RUN"],
     "error: this command needs matplotlib, which is not installed: pip install 'resnet-detection[vis]'"),
])
def test_a_missing_optional_package_names_its_extra(blocked, argv, message, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "total_loss": 1.0, "lr": 0.1}) + "\n")
    argv = [str(run_dir) if arg == "RUN" else arg for arg in argv] + ([f"output_dir={tmp_path / 'out'}"]
                                                                       if "train" in argv[0] else [])
    code = f"import runpy\nsys.argv = {argv!r}\nrunpy.run_path({argv[0]!r}, run_name='__main__')\n"
    result = run_blocked(blocked, code)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.stderr


# -- floors -------------------------------------------------------------------------------------------
def test_floor_pins_are_the_floors_of_every_group_and_refuse_an_open_requirement():
    from tests.floor_requirements import floor_pins, requirements

    pyproject = {"project": {"name": "resnet-detection", "dependencies": ["torch>=2.4", "safetensors>=0.4"],
                             "optional-dependencies": {"vis": ["matplotlib>=3.7"],
                                                       "all": ["resnet-detection[vis]"],
                                                       "dev": ["resnet-detection[all]", "pytest>=7.4"]}}}
    assert floor_pins(requirements(pyproject)) == ["matplotlib==3.7", "pytest==7.4", "safetensors==0.4", "torch==2.4"]
    with pytest.raises(ValueError, match="'numpy' has no floor"):
        floor_pins(["numpy"])
    with pytest.raises(ValueError, match="has no floor"):
        floor_pins(["numpy<2"])
