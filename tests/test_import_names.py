"""The toolkit's import names do not collide with the modules users' own projects commonly have."""

import subprocess
import sys

from tests.helpers import subprocess_env

COMMON_MODULES = ("engine", "utils", "transforms", "ops", "config", "train", "evaluate")


def test_imports_work_from_a_project_folder_with_common_module_names(tmp_path):
    """torchvision's detection references keep an engine.py, utils.py and transforms.py beside the
    user's script: our packages must import from there all the same."""
    for name in COMMON_MODULES:
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the project-local {name}.py was imported')\n")
    script = ("from detection.predictor import Predictor\n"
              "from detection.training import train_detector\n"
              "from localization.training import train_localizer\n"
              "from backbones import resnet50\n"
              "import resnet_engine.trainer, resnet_ops.winograd\n"
              "print('ok')\n")
    env = subprocess_env()
    env.pop("PYTHONPATH", None)  # as a user's shell: the installed package, the script's folder first
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
