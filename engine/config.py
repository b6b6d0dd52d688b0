"""YAML configs with ``_base_`` inheritance and ``dotted.key=value`` overrides, checked against a typed schema.

A schema is a tree of dataclasses (omegaconf structured configs). Every YAML file and every
command-line override is checked before it is merged, so that an unknown key or a wrong type
is reported with where it came from and the closest valid key:

    config error: unknown key 'model.backbone.dept' in configs/x.yaml (did you mean model.backbone.depth?)

Fields that accept a fixed set of strings are declared with :func:`choice`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError

BASE_KEY = "_base_"


class ConfigError(UserError):
    pass


def choice(default: str, options: Sequence[str]):
    """A string field restricted to ``options``."""
    return dataclasses.field(default=default, metadata={"choices": tuple(options)})


def schema_keys(schema: type, prefix: str = "") -> tuple[dict[str, dataclasses.Field], set[str]]:
    """The dotted leaf keys of a dataclass schema (mapped to their fields) and its section keys."""
    leaves: dict[str, dataclasses.Field] = {}
    sections: set[str] = set()
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        name = prefix + field.name
        if dataclasses.is_dataclass(hints[field.name]):
            sections.add(name)
            sub_leaves, sub_sections = schema_keys(hints[field.name], name + ".")
            leaves.update(sub_leaves)
            sections.update(sub_sections)
        else:
            leaves[name] = field
    return leaves, sections


def _flatten(tree: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(tree, dict) and (tree or not prefix):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], tree


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        leaf_close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
        close = [by_leaf[leaf_close[0]]] if leaf_close else []
    return f" (did you mean {close[0]}?)" if close else ""


class _YamlLoader(yaml.SafeLoader):
    """PyYAML with YAML 1.2 booleans (true/false only). Under YAML 1.1 rules ``solver.amp=off`` or
    ``amp: off`` would arrive as False instead of the choice "off"; boolean keys still accept
    yes/no/on/off, which the schema converts."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))


def load_yaml_text(text) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = load_yaml_text(handle)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=[1,2]`` -> ("a.b", [1, 2]); values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (for example solver.max_iter=1000)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _nest(key: str, value: Any) -> dict:
    tree: Any = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
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
        self.fields, self.sections = schema_keys(schema)
        self.leaves = list(self.fields)
        self.sources: dict[str, str] = {}

    # -- public ----------------------------------------------------------------------------------
    def load(self, path: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
        cfg = OmegaConf.structured(self.schema)
        if path:
            for layer_path, layer in self._file_layers(path, ()):
                cfg = self._merge(cfg, layer, layer_path)
        for text in overrides:
            key, value = parse_override(text)
            cfg = self._merge(cfg, _nest(key, value), f"override '{text}'")
        self._check_choices(cfg)
        OmegaConf.set_readonly(cfg, False)
        return cfg

    # -- internals -------------------------------------------------------------------------------
    def _file_layers(self, path: str, chain: tuple[str, ...]) -> list[tuple[str, dict]]:
        real = os.path.realpath(path)
        if real in chain:
            raise ConfigError(f"{path}: _base_ files include each other in a loop")
        data = read_yaml(path)
        bases = data.pop(BASE_KEY, [])
        if isinstance(bases, str):
            bases = [bases]
        layers = []
        for base in bases:
            base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
            if not os.path.isfile(base_path):
                raise ConfigError(f"{path}: _base_ file not found: {base_path}")
            layers.extend(self._file_layers(base_path, chain + (real,)))
        layers.append((path, data))
        return layers

    def _merge(self, cfg: DictConfig, layer: dict, source: str) -> DictConfig:
        for key, value in _flatten(layer):
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


def load_config(schema: type, path: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Load ``path`` (with its ``_base_`` files) and ``overrides`` on top of ``schema``'s defaults."""
    return ConfigLoader(schema).load(path, overrides)


def save_config(cfg: DictConfig, path: str) -> None:
    """Write the fully resolved config; the file alone reproduces the run."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)


def config_to_text(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
