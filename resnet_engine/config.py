"""YAML configs with ``_base_`` inheritance and ``dotted.key=value`` overrides, checked against a typed schema.

A schema is a tree of dataclasses (omegaconf structured configs). Every YAML file and every
command-line override is checked before it is merged, so that an unknown key or a wrong type
is reported with where it came from and the closest valid key:

    config error: unknown key 'model.backbone.dept' in configs/x.yaml (did you mean model.backbone.depth?)

Fields that accept a fixed set of strings are declared with :func:`choice`, numbers with a range
with :func:`positive`, :func:`non_negative`, :func:`fraction` or :func:`bounded` (each number of a list
field is checked the same way); every float must be finite. A value out of range stops the load with
one line naming the key, the value, where it was set and the range:

    solver.max_iter=0 in configs/x.yaml must be a positive integer

Each task's root schema names its task and tool with :func:`config_task`, so that a file of another
task's config stops with one line naming them rather than its first key unknown here:

    configs/cls_shapes.yaml is a classification config: run it with tools/train_cls.py

A key that was renamed stays readable for a while: a root schema declares its renamed keys with
:func:`renamed_keys`, and a file or override that uses an old name loads with one warning naming the
old key, the new one and where it was set. Configs saved inside checkpoints are translated silently
(:func:`config_from_text`, :func:`config_differences`): the user cannot edit them.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import importlib.resources
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError
from .files import write_text

BASE_KEY = "_base_"


class ConfigError(UserError):
    pass


# The release up to which the old name of a renamed key is still read.
OLD_NAMES_ACCEPTED_UNTIL = "0.2"

# {root schema: {old dotted key: new dotted key}}, filled by :func:`renamed_keys`.
RENAMED_KEYS: dict[type, dict[str, str]] = {}


def renamed_keys(table: Mapping[str, str]):
    """Class decorator of a root schema: ``{old dotted key: new dotted key}`` for keys renamed in it.
    Files and overrides may use the old name until OLD_NAMES_ACCEPTED_UNTIL, with a warning."""

    def register(schema: type) -> type:
        RENAMED_KEYS[schema] = dict(table)
        return schema

    return register


@dataclasses.dataclass(frozen=True)
class ConfigTask:
    """The task a root schema configures, to name the task and the tool of a config file (or checkpoint)
    given to another task's tool."""

    name: str  # "classification", as checkpoints record it in meta.task
    tool: str  # the command line that trains it, "tools/train_cls.py"
    model: str  # what its checkpoints hold, "classifier"
    schema: type
    # A schema whose keys are keys here too (every key of a classification file is a localization key): a
    # file of this task must set a key of its own, or it is taken for a file of that one.
    shares_keys_with: type | None = None

    def file_keys(self, layers: Sequence[tuple[str, dict]]) -> list[str]:
        """The dotted keys that the layers of a file (it and its _base_ files) set, under their new names."""
        renamed = RENAMED_KEYS.get(self.schema, {})
        return [key for source, layer in layers
                for key, _ in flatten_tree(use_new_names(layer, renamed, source, warn=False))]

    def knows(self, layers: Sequence[tuple[str, dict]]) -> bool:
        leaves, sections, _ = schema_keys(self.schema)
        return all(key in leaves or key in sections for key in self.file_keys(layers))

    def own_keys(self) -> list[str]:
        """The keys and whole sections of this schema that ``shares_keys_with`` lacks, top-level ones first."""
        leaves, sections, _ = schema_keys(self.schema)
        other_leaves, other_sections, _ = schema_keys(self.shares_keys_with)
        own = []
        for key in leaves:
            if key in other_leaves:
                continue
            parts = key.split(".")
            prefixes = (".".join(parts[:depth]) for depth in range(1, len(parts) + 1))
            named = next(p for p in prefixes if p not in other_sections)  # the top-most section the other lacks
            if named not in own:
                own.append(named)
        return sorted(own, key=lambda key: key.count("."))

    def sets_own_key(self, layers: Sequence[tuple[str, dict]]) -> bool:
        """Whether the file sets a key that ``shares_keys_with`` lacks, or sets none at all (``_base_: []``)."""
        other_leaves, other_sections, _ = schema_keys(self.shares_keys_with)
        keys = self.file_keys(layers)
        return not keys or any(key not in other_leaves and key not in other_sections for key in keys)

    def fits(self, layers: Sequence[tuple[str, dict]]) -> bool:
        """Whether a file of these layers is a config of this task."""
        return self.knows(layers) and (self.shares_keys_with is None or self.sets_own_key(layers))


# {root schema: its task}, filled by :func:`config_task` as each task's config module is imported.
CONFIG_TASKS: dict[type, ConfigTask] = {}
# The modules that define the tasks' root schemas. A tool imports its own task's only; the others are
# imported by name when a file does not fit, to say which task it is for (resnet_engine imports no task
# package at module level: they import it).
TASK_CONFIG_MODULES = ("detection.config", "classification.config", "localization.config")


def config_task(name: str, tool: str, model: str, shares_keys_with: type | None = None):
    """Class decorator of a root schema: the task it configures (:class:`ConfigTask`)."""

    def register(schema: type) -> type:
        CONFIG_TASKS[schema] = ConfigTask(name, tool, model, schema, shares_keys_with)
        return schema

    return register


def registered_tasks() -> list[ConfigTask]:
    """Every task's :class:`ConfigTask`, its config module imported if it was not yet."""
    for module in TASK_CONFIG_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:  # a task package left out of this installation
            continue
    return list(CONFIG_TASKS.values())


def task_named(name: str) -> ConfigTask | None:
    """The task of a checkpoint's meta.task ("detection", "classification", "localization"), or None."""
    known = next((task for task in CONFIG_TASKS.values() if task.name == name), None)
    return known or next((task for task in registered_tasks() if task.name == name), None)


def check_config_task(schema: type, path: str, layers: Sequence[tuple[str, dict]]) -> None:
    """A config file of another task stops with one line naming that task and its tool. Merged key by
    key, its first key unknown here would be reported with the closest key of this schema, an unrelated
    one; and a classification file, whose keys are all localization keys, would train a localizer with
    the classifier's recipe."""
    task = CONFIG_TASKS.get(schema)
    if task is None or task.fits(layers):
        return
    if task.knows(layers):  # every key is ours, and none is ours alone: a file of the task we share keys with
        other = CONFIG_TASKS[task.shares_keys_with]
        raise ConfigError(f"{path} is a {other.name} config: run it with {other.tool} (a {task.name} config sets "
                          f"keys of its own, such as {' or '.join(task.own_keys()[:2])})")
    other = next((other for other in registered_tasks() if other is not task and other.fits(layers)), None)
    if other is not None:  # else a typo: the merge names the unknown key and the closest valid one
        raise ConfigError(f"{path} is a {other.name} config: run it with {other.tool}")


def choice(default: str, options: Sequence[str]):
    """A string field restricted to ``options``."""
    return dataclasses.field(default=default, metadata={"choices": tuple(options)})


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The numbers a field accepts: its value, or every number of a list field (lists of lists too)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # ``low`` itself is excluded
    high_open: bool = False
    non_empty: bool = False  # a list field (and each list inside it) needs at least one number
    hint: str = ""  # appended to the message, e.g. what null means for this key

    def admits(self, number: float) -> bool:
        if not math.isfinite(number):
            return False
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        return self.high is None or (number < self.high if self.high_open else number <= self.high)

    def describe(self, integer: bool, plural: bool = False) -> str:
        """"a positive integer", "a number in [0, 1)", "positive numbers", ..."""
        kind = ("integer" if integer else "number") + ("s" if plural else "")
        if self.low == 0 and self.low_open and self.high is None:
            text = f"positive {kind}"
        elif self.low is not None and self.high is not None:
            text = (f"{kind} in {'(' if self.low_open else '['}{bound_text(self.low)}, "
                    f"{bound_text(self.high)}{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {bound_text(self.low)}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {bound_text(self.high)}"
        else:
            text = f"finite {kind}"
        if plural:
            return text
        return ("an " if text[0] in "aeiou" else "a ") + text


def bound_text(value: float) -> str:
    """A bound as a message gives it: an integer in full (a seed's 9223372036854775807), else %g."""
    return str(value) if isinstance(value, int) else f"{value:g}"


FINITE = Bounds()


def bounded(default, low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False, non_empty: bool = False, hint: str = ""):
    """A number (or list of numbers) field whose values must lie between ``low`` and ``high``."""
    bounds = Bounds(low, high, low_open, high_open, non_empty, hint)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"bounds": bounds})
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def positive(default, **kwargs):
    """Sizes, counts, periods, learning rates: > 0."""
    return bounded(default, 0, low_open=True, **kwargs)


def non_negative(default, **kwargs):
    """Values where 0 means "off" or "none": >= 0."""
    return bounded(default, 0, **kwargs)


def fraction(default, **kwargs):
    """Probabilities, fractions and IoU thresholds: in [0, 1]."""
    return bounded(default, 0, 1, **kwargs)


def schema_keys(schema: type, prefix: str = "") -> tuple[dict[str, dataclasses.Field], set[str], dict[str, Any]]:
    """The dotted leaf keys of a dataclass schema (mapped to their fields), its section keys, and the
    leaves' resolved types."""
    leaves: dict[str, dataclasses.Field] = {}
    sections: set[str] = set()
    types: dict[str, Any] = {}
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        name = prefix + field.name
        if dataclasses.is_dataclass(hints[field.name]):
            sections.add(name)
            sub_leaves, sub_sections, sub_types = schema_keys(hints[field.name], name + ".")
            leaves.update(sub_leaves)
            sections.update(sub_sections)
            types.update(sub_types)
        else:
            leaves[name] = field
            types[name] = hints[field.name]
    return leaves, sections, types


def _numbers_in(hint: Any) -> set[type]:
    """{int} for ``int`` or ``list[int] | None``, {float} for ``list[list[float]]``, ..."""
    if hint in (int, float):
        return {hint}
    return set().union(*(_numbers_in(arg) for arg in typing.get_args(hint))) if typing.get_args(hint) else set()


def _list_depth(hint: Any) -> int:
    """How deeply lists nest in a type: 0 for ``int``, 1 for ``list[int] | None``, 2 for ``list[list[float]]``."""
    if typing.get_origin(hint) is list:
        return 1 + max((_list_depth(arg) for arg in typing.get_args(hint)), default=0)
    return max((_list_depth(arg) for arg in typing.get_args(hint)), default=0)


def _nests_deeper(value: Any, depth: int) -> bool:
    """Whether a value holds lists nested deeper than ``depth`` levels."""
    if not isinstance(value, list):
        return False
    return depth <= 0 or any(_nests_deeper(item, depth - 1) for item in value)


def flatten_tree(tree: Any, separator: str = ".", prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(the keys down to a leaf joined by ``separator``, the leaf) for every leaf of nested dicts; an
    empty dict below the top is a leaf."""
    if isinstance(tree, dict) and (tree or not prefix):
        for key, value in tree.items():
            yield from flatten_tree(value, separator, f"{prefix}{key}{separator}")
    else:
        yield prefix[:len(prefix) - len(separator)], tree


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        leaf_close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
        close = [by_leaf[leaf_close[0]]] if leaf_close else []
    return f" (did you mean {close[0]}?)" if close else ""


class _YamlLoader(yaml.SafeLoader):
    """PyYAML with YAML 1.2 booleans (true/false only), numbers and no dates, and no key given twice
    in one mapping. Under YAML 1.1 rules ``solver.amp=off`` or ``amp: off`` would arrive as False
    instead of the choice "off" (boolean keys still accept yes/no/on/off, which the schema converts);
    ``steps: [032000]`` as the octal 13312, ``max_iter: 1:30`` as the base-60 90 and a run name
    ``2024-01-05`` as a date. PyYAML keeps the last of two equal keys without a word: a setting edited
    in one place and left in another would be ignored."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base" overrides on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, (str, int, float, bool)):
                    continue
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"'{key}' is given twice in one section (lines {first_line[key]} and {line}): "
                        f"keep one", key_node.start_mark)
                first_line[key] = line
        return super().construct_mapping(node, deep)


YAML_1_1_ONLY = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                 "tag:yaml.org,2002:timestamp")
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in YAML_1_1_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))
# YAML 1.2's core schema: decimal integers (a leading zero is no octal), 0o and 0x; floats with an
# optional exponent (1e-3 too, which YAML 1.1 leaves a string). Underscores between digits are kept
# from YAML 1.1 (1_000), as Python reads them.
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:int",
                                  re.compile(r"^(?:[-+]?[0-9](?:_?[0-9])*|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                  list("-+0123456789"))
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9](?:_?[0-9])*(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """YAML 1.2 integers: base 10 whatever the leading zeros, 0o octal, 0x hexadecimal."""
    text = loader.construct_scalar(node).replace("_", "")
    return int(text, 0) if text.lstrip("+-")[:2] in ("0o", "0x") else int(text, 10)


_YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_yaml_text(text) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)


# The configs/ folder, installed as this package (pyproject.toml) so that the YAML files ship with the toolkit.
SHIPPED_CONFIGS = "resnet_configs"


def shipped_config_dir() -> str | None:
    """The folder of the YAML configs that come with the toolkit; None if it is not installed."""
    try:
        return str(importlib.resources.files(SHIPPED_CONFIGS))
    except ModuleNotFoundError:
        return None


def shipped_configs() -> list[str]:
    folder = shipped_config_dir()
    return sorted(name for name in os.listdir(folder) if name.endswith(".yaml")) if folder else []


def find_config(path: str) -> str:
    """``path`` itself when it exists; else the shipped config of that name (``coco_r101.yaml`` or
    ``configs/coco_r101.yaml`` from any working directory); else one line naming the closest one."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder: give a config file (a .yaml) as --cfg")
    name = os.path.basename(path)
    shipped = shipped_configs()
    if os.path.dirname(path) in ("", "configs") and name in shipped:
        return os.path.join(shipped_config_dir(), name)
    close = difflib.get_close_matches(name, shipped, n=1)
    hint = f" (did you mean {close[0]}?)" if close else (f" (shipped configs: {', '.join(shipped)})" if shipped else "")
    raise ConfigError(f"config file not found: {path}{hint}")


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = load_yaml_text(handle)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}): "
                          f"save the config as UTF-8") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({_yaml_problem(error)})") from None
    if data is None:
        # An empty file is a mistake (a wrong file, an unsaved editor): the defaults would run unannounced.
        raise ConfigError(f"{path} holds no settings: give the keys to set in it, or leave out --cfg to run the "
                          f"defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=[1,2]`` -> ("a.b", [1, 2]); values are parsed as YAML (invalid YAML raises yaml.YAMLError)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (for example solver.max_iter=1000)")
    key, raw = text.split("=", 1)
    return key.strip(), load_yaml_text(raw) if raw.strip() else ""


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's problem, with where its context (a bracket left open) began, and the fix of a tab."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    problem_mark = getattr(error, "problem_mark", None)
    if context and context_mark is not None and (problem_mark is None or context_mark.line != problem_mark.line):
        problem += f"; {context} that starts on line {context_mark.line + 1}"
    if "'\\t'" in problem:
        problem += ": indent with spaces, not tabs"
    return problem


def _nest(key: str, value: Any) -> dict:
    tree: Any = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def _parent_section(tree: dict, key: str, create: bool = False) -> dict | None:
    """The mapping that holds dotted ``key``'s leaf in a nested ``tree`` (made when ``create``), or None."""
    node = tree
    for part in key.split(".")[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            if not create:
                return None
            child = node[part] = {}
        node = child
    return node


def _old_and_new_given(old: str, new: str, source: str) -> ConfigError:
    return ConfigError(f"{old} and {new} in {source} are the old and the new name of one key: keep {new} only")


def use_new_names(tree: dict, renamed: Mapping[str, str], source: str, warn: bool = True) -> dict:
    """A copy of ``tree`` (one file's mapping or one override) with each old key of ``renamed`` moved to its
    new name, with a warning when ``warn``; both names of one key in one source are an error."""
    tree = copy.deepcopy(tree)
    for old, new in renamed.items():
        holder = _parent_section(tree, old)
        old_leaf = old.rsplit(".", 1)[-1]
        if holder is None or old_leaf not in holder:
            continue
        value = holder.pop(old_leaf)
        new_holder = _parent_section(tree, new, create=True)
        new_leaf = new.rsplit(".", 1)[-1]
        if new_leaf in new_holder:
            raise _old_and_new_given(old, new, source)
        new_holder[new_leaf] = value
        if warn:
            warnings.warn(f"{old} in {source} is deprecated: use {new} (the old name is accepted until "
                          f"{OLD_NAMES_ACCEPTED_UNTIL})", FutureWarning, stacklevel=3)
    return tree


def _drop_empty_sections(tree: dict, sections: set[str], prefix: str = "") -> dict:
    """``model:`` with nothing under it in a YAML file means "no change", not "set model to null"."""
    kept = {}
    for key, value in tree.items():
        name = prefix + key
        if name in sections:
            if not value:
                continue
            value = _drop_empty_sections(value, sections, name + ".")
        kept[key] = value
    return kept


class ConfigLoader:
    """Loads and checks configs for one schema (a dataclass type)."""

    def __init__(self, schema: type):
        self.schema = schema
        self.fields, self.sections, self.types = schema_keys(schema)
        self.leaves = list(self.fields)
        self.sources: dict[str, str] = {}
        self.defaults = OmegaConf.structured(schema)
        self.renamed = RENAMED_KEYS.get(schema, {})

    # -- public ----------------------------------------------------------------------------------
    def load(self, path: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
        cfg = OmegaConf.structured(self.schema)
        if path:
            path = find_config(path)
            layers = self._file_layers(path, ())
            check_config_task(self.schema, path, layers)
            for layer_path, layer in layers:
                cfg = self._merge(cfg, layer, layer_path)
        parsed = [(text, *self._parse_override(text)) for text in overrides]
        self._check_one_name_per_key([key for _, key, _ in parsed])
        for text, key, value in parsed:
            cfg = self._merge(cfg, _nest(key, value), f"override '{text}'")
        self._check_choices(cfg)
        self._check_bounds(cfg)
        OmegaConf.set_readonly(cfg, False)
        return cfg

    # -- internals -------------------------------------------------------------------------------
    def _parse_override(self, text: str) -> tuple[str, Any]:
        try:
            key, value = parse_override(text)
        except yaml.YAMLError as error:
            key, raw = (part.strip() for part in text.split("=", 1))
            known = self.renamed.get(key, key)
            if known not in self.fields or str in (self.types[known], *typing.get_args(self.types[known])):
                return key, raw  # a path or name with YAML's special characters; unknown keys are reported next
            example = self._example(known)
            fix = f"; write it like {known}={example}" if example else ""
            raise ConfigError(f"override '{text}' is not valid YAML ({_yaml_problem(error)}){fix}") from None
        if value is not None and not isinstance(value, str) and self._takes_text(self.renamed.get(key, key)):
            # A name or path that reads as a number (output_dir=0123, a run name 1.10) is kept as written:
            # through a number it would become another folder or name (123, 1.1).
            return key, text.split("=", 1)[1].strip()
        return key, value

    def _takes_text(self, key: str) -> bool:
        """Whether the schema's type of ``key`` is a string (or a string or None), not a list of them."""
        if key not in self.fields:
            return False
        kind = self.types[key]
        if typing.get_origin(kind) not in (typing.Union, types.UnionType):
            return kind is str
        return {arg for arg in typing.get_args(kind) if arg is not type(None)} == {str}

    def _check_one_name_per_key(self, keys: Sequence[str]) -> None:
        """The overrides give no key under both its old and its new name."""
        name_given: dict[str, str] = {}  # key -> the name (old or new) it was given first
        for key in keys:
            current = self.renamed.get(key, key)
            if name_given.setdefault(current, key) != key:
                raise _old_and_new_given(key if key != current else name_given[current], current, "the overrides")

    def _example(self, key: str) -> str:
        """The schema's default of ``key`` in override syntax ("[600]"), or "" when it has none."""
        value = OmegaConf.select(self.defaults, key)
        if value is None:
            return ""
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()

    def _file_layers(self, path: str, chain: tuple[str, ...]) -> list[tuple[str, dict]]:
        real = os.path.realpath(path)
        if real in chain:
            raise ConfigError(f"{path}: _base_ files include each other in a loop")
        data = read_yaml(path)
        given = data.pop(BASE_KEY, [])
        bases = [given] if isinstance(given, str) else given
        if not isinstance(bases, list) or not all(isinstance(base, str) and base for base in bases):
            raise ConfigError(f"{path}: _base_ must be a config file's name or a list of them, not "
                              f"{yaml.safe_dump(given, default_flow_style=True).strip().removesuffix('...').strip()}")
        layers = []
        for base in bases:
            base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
            if not os.path.isfile(base_path) and os.path.dirname(base) in ("", "configs") and \
                    os.path.basename(base) in shipped_configs():
                base_path = os.path.join(shipped_config_dir(), os.path.basename(base))  # a shipped one, by name
            if not os.path.isfile(base_path):
                raise ConfigError(f"{path}: _base_ file not found: {base_path} (a path relative to {path}'s "
                                  f"folder, or the name of a shipped config)")
            layers.extend(self._file_layers(base_path, chain + (real,)))
        layers.append((path, data))
        return layers

    def _merge(self, cfg: DictConfig, layer: dict, source: str) -> DictConfig:
        layer = use_new_names(layer, self.renamed, source)
        for key, value in flatten_tree(layer):
            if key in self.sections:
                if value is None or value == {}:
                    continue
                raise ConfigError(f"'{key}' in {source} is a section, not a value: set the keys under it")
            if key not in self.fields:
                raise ConfigError(f"unknown key '{key}' in {source}{_suggest(key, self.leaves)}")
            self.sources[key] = source
        try:
            return OmegaConf.merge(cfg, OmegaConf.create(_drop_empty_sections(layer, self.sections)))
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", "") or "?"
            if typing.get_origin(self.types.get(key)) is list:
                raise ConfigError(f"'{key}' in {source} must be a list in brackets, such as "
                                  f"{key}={self._example(key)}") from None
            message = str(error).splitlines()[0]
            raise ConfigError(f"bad value for '{key}' in {source}: {message}") from None

    def _check_choices(self, cfg: DictConfig) -> None:
        for key, field in self.fields.items():
            options = field.metadata.get("choices") if field.metadata else None
            if not options:
                continue
            value = OmegaConf.select(cfg, key)
            if value not in options:
                source = self.sources.get(key, "the defaults")
                raise ConfigError(f"'{key}' in {source} is '{value}': choose one of {', '.join(repr(o) if o == '' else str(o) for o in options)}")

    def _check_bounds(self, cfg: DictConfig) -> None:
        for key, field in self.fields.items():
            numbers = _numbers_in(self.types[key])
            bounds = field.metadata.get("bounds") or (FINITE if float in numbers else None)
            value = OmegaConf.select(cfg, key)
            if bounds is None or value is None:
                continue
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            depth = _list_depth(self.types[key])
            if _nests_deeper(value, depth):
                source = self.sources.get(key, "the defaults")
                where = "" if source.startswith("override ") else f" in {source}"
                shape = "a number" if depth == 0 else "a list of numbers" if depth == 1 else "a list of lists of numbers"
                raise ConfigError(f"{key}={_show(value)}{where} must be {shape}, not lists nested deeper")
            if not _within(value, bounds):
                source = self.sources.get(key, "the defaults")
                where = "" if source.startswith("override ") else f" in {source}"  # an override shows key=value
                integer = numbers == {int}
                wanted = (f"a {'non-empty ' if bounds.non_empty else ''}list of {bounds.describe(integer, plural=True)}"
                          if isinstance(value, list) else bounds.describe(integer))
                hint = f", {bounds.hint}" if bounds.hint else ""
                raise ConfigError(f"{key}={_show(value)}{where} must be {wanted}{hint}")


def _within(value: Any, bounds: Bounds) -> bool:
    """``value`` (a number, or a list of them, nested or not) satisfies ``bounds``."""
    if isinstance(value, list):
        return (bool(value) or not bounds.non_empty) and all(_within(item, bounds) for item in value)
    return bounds.admits(value)


def _show(value: Any) -> str:
    """A value as an override would write it: [600, 800], 0.5, nan."""
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def load_config(schema: type, path: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Load ``path`` (with its ``_base_`` files) and ``overrides`` on top of ``schema``'s defaults."""
    return ConfigLoader(schema).load(path, overrides)


def save_config(cfg: DictConfig, path: str) -> None:
    """Write the fully resolved config; the file alone reproduces the run."""
    write_text(path, config_to_text(cfg))


def config_to_text(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def config_from_text(schema: type, text: str) -> DictConfig:
    """A resolved config saved as text (in a checkpoint) over ``schema``'s defaults: keys renamed since
    are read under their new names without a warning (a checkpoint is not for the user to edit), keys
    added since take their defaults."""
    tree = use_new_names(load_yaml_text(text) or {}, RENAMED_KEYS.get(schema, {}), "a saved config", warn=False)
    return OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(tree))


def _with_new_names(flat: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``flat`` with each old key name replaced by the new name that ``other`` uses (the schema of a text
    is unknown: any registered rename applies, when the other side has the new key and this one lacks it)."""
    renamed = {}
    for key, value in flat.items():
        news = (table.get(key) for table in RENAMED_KEYS.values())
        renamed[next((new for new in news if new in other and new not in flat), key)] = value
    return renamed


def config_differences(before_text: str, after_text: str) -> list[str]:
    """``key: old -> new`` for every leaf that differs between two resolved configs (as saved in
    checkpoints), in key order; keys present on one side only show as ``(absent)``. A key renamed
    between the two is compared under its new name."""
    try:
        before = dict(flatten_tree(yaml.safe_load(before_text) or {}))
        after = dict(flatten_tree(yaml.safe_load(after_text) or {}))
    except yaml.YAMLError:
        return []
    before, after = _with_new_names(before, after), _with_new_names(after, before)
    absent = "(absent)"
    return [f"{key}: {before.get(key, absent)} -> {after.get(key, absent)}"
            for key in sorted(set(before) | set(after)) if before.get(key, absent) != after.get(key, absent)]
