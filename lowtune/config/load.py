"""Loading a recipe: YAML text and `a.b=c` overrides, built into a checked `Recipe`."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from lowtune.config.coerce import coerce
from lowtune.config.schema import SECTIONS, At, Recipe, train_config_class
from lowtune.errors import LowtuneError, did_you_mean


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe YAML (or the defaults when `path` is None) and apply `a.b=c` overrides."""
    raw: dict[str, Any] = {}
    lines: dict[str, int] = {}
    where = "recipe"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LowtuneError(f"recipe {path} not found; `lowtune recipes` lists the shipped ones")
        where = str(path)
        text = path.read_text()
        try:
            raw = yaml.safe_load(text) or {}
            lines = _key_lines(yaml.compose(text))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark else ""
            raise LowtuneError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(raw, dict):
            raise LowtuneError(f"{path}: a recipe is a mapping of sections (method, model, ...)")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LowtuneError(f"override {item!r}: write it as section.field=value, e.g. train.max_steps=50")
        target = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise LowtuneError(f"override {item!r}: {part} is not a section")
        target[parts[-1]] = _override_value(value)
        lines[key.strip()] = -1
        for i in range(1, len(parts)):  # a new section named by an override
            lines.setdefault(".".join(parts[:i]), -1)
    return _build(raw, where, lines)


def _override_value(text: str) -> Any:
    """An override's value as YAML would read it (3, true, [a, b], null); text YAML cannot parse stays text."""
    if not text.strip():
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Map dotted keys to their 1-based line in the YAML text, for error messages."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            out.update(_key_lines(v, key + "."))
    return out


def _build(raw: dict[str, Any], where: str, lines: dict[str, int]) -> Recipe:
    def at(key: str) -> str:
        line = lines.get(key)
        if line == -1:
            return "override"
        return f"{where}:{line}" if line else where

    for key in raw:
        if key not in SECTIONS:
            raise LowtuneError(f"{at(key)}: unknown section {key}{did_you_mean(str(key), SECTIONS)}")
    kwargs: dict[str, Any] = {}
    for name, tp in SECTIONS.items():
        if name not in raw:
            continue
        value = raw[name]
        if name == "method":
            kwargs[name] = coerce(value, str, name, at(name))
        elif name == "train":
            if not isinstance(value, dict):
                raise LowtuneError(f"{at(name)}: train must be a mapping of TRL config fields")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = _build_section(tp, value, name, at)
    recipe = Recipe(**kwargs)
    recipe.check(at)
    recipe.train = _check_train(recipe.method, recipe.train, at)
    return recipe


def _build_section(cls: type, value: Any, name: str, at: At) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise LowtuneError(f"{at(name)}: {name} must be a mapping of fields")
    return cls(**_coerce_fields(cls, value, name, at))


def _check_train(method: str, train: dict[str, Any], at: At) -> dict[str, Any]:
    """Check `train` keys and values against TRL's config class for the method."""
    return _coerce_fields(train_config_class(method), train, "train", at)


def _coerce_fields(cls: type, value: dict[str, Any], name: str, at: At) -> dict[str, Any]:
    """`value`'s keys checked against the init fields of dataclass `cls`, and its values coerced to their types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    out = {}
    for key, v in value.items():
        dotted = f"{name}.{key}"
        if key not in fields:
            raise LowtuneError(f"{at(dotted)}: unknown key {dotted}{did_you_mean(str(key), fields)}")
        out[key] = coerce(v, hints.get(key, Any), dotted, at(dotted))
    return out
