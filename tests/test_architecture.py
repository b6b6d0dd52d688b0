"""The import graph of the toolkit is its architecture (docs/ARCHITECTURE.md).

Every module of the five packages is parsed with ``ast``, its module-level and function-level imports
alike, and the graph is held to these rules:

* no cycle between modules;
* packages import only downwards: resnet_ops at the bottom, backbones on it, detection on both,
  classification on detection (its image decoding and synthetic shapes), localization on all of them;
  resnet_engine serves every task and imports none of the others; tools/, benchmarks/ and tests/ use
  the library, never the reverse;
* data code does not import model code;
* no module takes an underscore-private name from another;
* no function-level import of a project module (it hides a dependency from the reader and from this
  test's drawing); a heavy optional third-party package may be imported where it is used, when it
  is listed in LAZY_IMPORTS with the reason.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PACKAGES = ("resnet_ops", "backbones", "resnet_engine", "detection", "classification", "localization")
# What each package may import besides itself.
MAY_IMPORT = {
    "resnet_ops": set(),
    "backbones": {"resnet_ops"},
    "resnet_engine": set(),
    "detection": {"resnet_ops", "backbones", "resnet_engine"},
    "classification": {"resnet_ops", "backbones", "resnet_engine", "detection"},
    "localization": {"resnet_ops", "backbones", "resnet_engine", "detection", "classification"},
}
OUTSIDE_THE_LIBRARY = ("tools", "benchmarks", "tests")
DATA_CODE = ("detection.data", "classification.data", "localization.data")
MODEL_CODE = ("backbones", "detection.modeling", "classification.classifier", "localization.rpn_localizer",
              "localization.rcnn")

# Third-party modules a function may import, with the reason it does not import them at the top.
LAZY_IMPORTS = {
    "matplotlib": "only the --plots options draw; the import costs about a second and selects a backend",
    "pycocotools": "the scoring backend: loaded when a test set is scored, not when a model is built",
    "faster_coco_eval": "the optional faster scoring backend (test.eval_backend=faster_coco_eval)",
    "onnxruntime": "an optional package, needed only to check an ONNX export",
    "onnx": "an optional package (the export extra), needed only to write and read an ONNX file's metadata",
    "timm": "only timm backbones (model.backbone.timm_name) and timm: weights need it; it loads slowly",
    "torchvision.models": "only torchvision: weights names need the model zoo",
    "huggingface_hub": "only timm: weights names download from the Hugging Face Hub",
    "safetensors.torch": "only .safetensors weights files need it",
    "torch.utils.tensorboard": "TensorBoard logging loads tensorboard, which is slow to import",
    "wandb": "an optional tracker (logging.wandb), slow to import",
    "mlflow": "an optional tracker (logging.mlflow), slow to import",
    "yaml": "the backbones need torch and torchvision alone: a checkpoint's saved config is read when PyYAML is there",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (a project module resolved to the deepest one that exists)
    names: tuple[str, ...]  # the names taken from ``target`` by ``from target import ...``
    line: int
    in_function: bool


def find_modules(root: str) -> dict[str, str]:
    """{dotted module name: file} of every module of the five packages under ``root``."""
    modules = {}
    for package in PACKAGES:
        for folder, subfolders, files in os.walk(os.path.join(root, package)):
            subfolders[:] = sorted(d for d in subfolders if os.path.isfile(os.path.join(folder, d, "__init__.py")))
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return modules


def is_within(name: str, prefixes) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


class ImportCollector(ast.NodeVisitor):
    """The imports of one module, whether each sits in a function, and private attributes read from
    project modules bound to a name (``dist_utils._helper``)."""

    def __init__(self, module: str, is_package: bool, modules: dict[str, str]):
        self.module, self.modules = module, modules
        self.package = module if is_package else module.rpartition(".")[0]
        self.imports: list[Import] = []
        self.bound_modules: dict[str, str] = {}
        self.private_reads: list[tuple[str, str, int]] = []
        self.depth = 0

    def visit_FunctionDef(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(alias.name, (), node.lineno)
            if alias.asname and alias.name in self.modules:
                self.bound_modules[alias.asname] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parts = parts[:len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        names = []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.modules:
                self.add(submodule, (), node.lineno)
                self.bound_modules[alias.asname or alias.name] = submodule
            else:
                names.append(alias.name)
        if names:
            self.add(base, tuple(names), node.lineno)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.bound_modules and is_private(node.attr):
            self.private_reads.append((self.bound_modules[node.value.id], node.attr, node.lineno))
        self.generic_visit(node)

    def add(self, target: str, names: tuple[str, ...], line: int) -> None:
        self.imports.append(Import(self.module, target, names, line, self.depth > 0))


def collect(root: str) -> tuple[dict[str, str], list[Import], list[str]]:
    """(modules, every import, "module:line reads target._name" for private attributes of modules)."""
    modules = find_modules(root)
    imports, private_reads = [], []
    for name, path in modules.items():
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        collector = ImportCollector(name, path.endswith("__init__.py"), modules)
        collector.visit(tree)
        imports += collector.imports
        private_reads += [f"{name}:{line} reads {target}.{attr}" for target, attr, line in collector.private_reads]
    return modules, imports, private_reads


def is_project(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def project_edges(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for item in imports:
        if is_project(item.target) and item.target != item.module:
            graph.setdefault(item.module, set()).add(item.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def upward_imports(imports: list[Import]) -> list[str]:
    found = []
    for item in imports:
        source, target = item.module.split(".")[0], item.target.split(".")[0]
        if target in OUTSIDE_THE_LIBRARY or (is_project(item.target) and target != source
                                             and target not in MAY_IMPORT[source]):
            found.append(f"{item.module}:{item.line} imports {item.target}")
    return found


def data_imports_of_model_code(imports: list[Import]) -> list[str]:
    return [f"{item.module}:{item.line} imports {item.target}" for item in imports
            if is_within(item.module, DATA_CODE) and is_within(item.target, MODEL_CODE)]


def private_name_imports(imports: list[Import], private_reads: list[str]) -> list[str]:
    taken = [f"{item.module}:{item.line} imports {item.target}.{name}" for item in imports
             if is_project(item.target) for name in item.names if is_private(name)]
    return taken + private_reads


def lazy_allowance(target: str) -> str | None:
    return next((name for name in LAZY_IMPORTS if is_within(target, [name])), None)


def function_level_imports(imports: list[Import]) -> list[str]:
    return [f"{item.module}:{item.line} imports {item.target} inside a function" for item in imports
            if item.in_function and (is_project(item.target) or lazy_allowance(item.target) is None)]


def problems(root: str) -> dict[str, list]:
    modules, imports, private_reads = collect(root)
    return {"cycles": cycles(project_edges(imports)), "upward": upward_imports(imports),
            "data imports model": data_imports_of_model_code(imports),
            "private names": private_name_imports(imports, private_reads),
            "function-level": function_level_imports(imports)}


# --------------------------------------------------------------------------------------------- the toolkit


def test_the_toolkit_has_no_cycle_no_upward_arrow_and_no_hidden_import():
    found = problems(ROOT)
    assert found == {kind: [] for kind in found}, "\n".join(
        f"{kind}: {item}" for kind, items in found.items() for item in items)


def test_every_lazy_import_allowance_is_in_use():
    """An allowance that no module needs any more would let the next hidden import through unseen."""
    _, imports, _ = collect(ROOT)
    used = {lazy_allowance(item.target) for item in imports if item.in_function}
    assert sorted(set(LAZY_IMPORTS) - used) == []


# Installed from configs/ under this name: YAML files only, no code to place in the order.
CONFIG_PACKAGE = ("resnet_configs", "configs")
TOOLS_PACKAGE = ("resnet_tools", "tools")  # the command lines, outside the library's order


def test_every_installed_package_has_its_place_in_the_order():
    """A package the project installs but this test does not know would go unchecked, and a
    subpackage missing from pyproject's explicit list would be left out of the wheel."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        setuptools = tomllib.load(handle)["tool"]["setuptools"]
    installed = set(setuptools["packages"])
    assert setuptools["package-dir"] == dict([CONFIG_PACKAGE, TOOLS_PACKAGE])
    code_packages = installed - {CONFIG_PACKAGE[0], TOOLS_PACKAGE[0]}
    assert sorted({name.split(".")[0] for name in code_packages}) == sorted(PACKAGES) == sorted(MAY_IMPORT)
    on_disk = {os.path.relpath(folder, ROOT).replace(os.sep, ".")
               for top in PACKAGES for folder, _, files in os.walk(os.path.join(ROOT, top))
               if "__init__.py" in files}
    assert code_packages == on_disk
    config_files = os.listdir(os.path.join(ROOT, CONFIG_PACKAGE[1]))
    assert [name for name in config_files if name.endswith(".py") and name != "__init__.py"] == []


def test_the_named_data_and_model_modules_exist():
    """A renamed module must be renamed here too, or the data-model rule would check nothing."""
    modules = find_modules(ROOT)
    assert [prefix for prefix in DATA_CODE + MODEL_CODE if not is_within_any_module(prefix, modules)] == []
    assert len(modules) > 80  # the walk found the tree, not an empty folder


def is_within_any_module(prefix: str, modules: dict[str, str]) -> bool:
    return any(is_within(name, [prefix]) for name in modules)


# --------------------------------------------------------------------------------------------- the checks


TOY_TREE = {
    "resnet_ops/__init__.py": "",
    "resnet_ops/kernels.py": "def _tile():\n    pass\n",
    "backbones/__init__.py": "from resnet_engine.errors import UserError\n",
    "resnet_engine/__init__.py": "",
    "resnet_engine/errors.py": "class UserError(Exception):\n    pass\n",
    "resnet_engine/trainer.py": "from resnet_ops import kernels\n",
    "detection/__init__.py": "from resnet_engine.version import __version__\n",
    "detection/export.py": "import localization.rcnn\nimport tools.infer\n",
    "detection/data/__init__.py": "",
    "detection/data/loader.py": "import numpy\n\n\ndef build():\n    from ..modeling.build import needs\n",
    "detection/modeling/__init__.py": "",
    "detection/modeling/build.py": ("import matplotlib\n\nfrom resnet_ops.kernels import _tile\n\n\ndef needs():\n"
                                    "    import onnxruntime\n    import json\n"),
    "localization/__init__.py": "",
    "localization/rcnn.py": "from . import training\n",
    "localization/training.py": ("from detection.data import loader as data_loader\n\nfrom .rcnn import x\n\n\n"
                                 "def f():\n    return data_loader._cache\n"),
}


def test_the_checks_find_each_kind_of_problem_in_a_toy_tree(tmp_path):
    for name, text in TOY_TREE.items():
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_text(text)
    assert problems(str(tmp_path)) == {
        "cycles": [["localization.rcnn", "localization.training"]],
        "upward": ["backbones:1 imports resnet_engine.errors", "resnet_engine.trainer:1 imports resnet_ops.kernels",
                   "detection.export:1 imports localization.rcnn", "detection.export:2 imports tools.infer"],
        "data imports model": ["detection.data.loader:5 imports detection.modeling.build"],
        "private names": ["detection.modeling.build:3 imports resnet_ops.kernels._tile",
                          "localization.training:7 reads detection.data.loader._cache"],
        "function-level": ["detection.data.loader:5 imports detection.modeling.build inside a function",
                           "detection.modeling.build:8 imports json inside a function"],
    }
