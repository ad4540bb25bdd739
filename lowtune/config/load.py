"""Loading a recipe: YAML text and `a.b=c` overrides, built into a checked `Recipe`."""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from lowtune.config.coerce import coerce
from lowtune.config.schema import SECTIONS, STAGE_SECTIONS, At, Recipe, Stage, train_config_class
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
        if not value.strip():  # most often a shell variable that was empty: never read as "unset"
            raise LowtuneError(f"override {item!r}: no value after '='; give one, or {key}=null to unset the field")
        target = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(target, list):  # a pipeline's stage, by its number: stages.2.train.max_steps=50
                if not part.isdigit() or not 1 <= int(part) <= len(target):
                    raise LowtuneError(f"override {item!r}: {part} is not a stage number (1 to {len(target)})")
                target = target[int(part) - 1]
            else:
                target = target.setdefault(part, {})
            if not isinstance(target, (dict, list)) or (isinstance(target, list) and part != "stages"):
                raise LowtuneError(f"override {item!r}: {part} is not a section")
        if isinstance(target, list):
            raise LowtuneError(f"override {item!r}: set a field of a stage, e.g. stages.2.train.max_steps=10")
        target[parts[-1]] = _override_value(value)
        lines[_dotted(parts)] = -1
        for i in range(1, len(parts)):  # a new section named by an override
            lines.setdefault(_dotted(parts[:i]), -1)
    return _build(raw, where, lines)


def _dotted(parts: list[str]) -> str:
    """An override's key as errors name it: stages.2.train.lr -> stages[2].train.lr."""
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() and out else f"{'.' if out else ''}{part}"
    return out


def _override_value(text: str) -> Any:
    """An override's value as YAML would read it (3, true, [a, b], null); text YAML cannot parse stays text."""
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
            if isinstance(v, yaml.SequenceNode):  # a pipeline's stages: stages[1], stages[2], ...
                for i, item in enumerate(v.value, 1):
                    out[f"{key}[{i}]"] = item.start_mark.line + 1
                    out.update(_key_lines(item, f"{key}[{i}]."))
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
        if name not in raw or name == "stages":
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
    if "stages" in raw:
        if kwargs.get("method", "pipeline") != "pipeline":
            raise LowtuneError(
                f"{at('method')}: a pipeline's stages name their methods; remove the top-level method "
                f"{kwargs['method']} (or the stages, for one method)"
            )
        kwargs["method"] = "pipeline"
    elif kwargs.get("method") == "pipeline":
        raise LowtuneError(f"{at('method')}: method pipeline needs stages (a list of methods with their sections)")
    recipe = Recipe(**kwargs)
    recipe.check(at)
    if recipe.method == "pipeline":
        recipe.stages = _build_stages(raw["stages"], recipe, at)
    else:
        recipe.train = _check_train(recipe.method, recipe.train, at)
    return recipe


def _build_stages(stages: Any, top: Recipe, at: At) -> list[Stage]:
    """A pipeline's stages, each its own sections merged over the pipeline's (`top`) and checked as a recipe; errors
    name the stage (`stages[2].train.learnig_rate`), numbered from 1 as the run's stages/ directories are."""
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise LowtuneError(f"{at('stages')}: stages must be a list of stages, each a mapping with its method")
    built = []
    for i, raw in enumerate(stages, 1):
        name = f"stages[{i}]"

        def at_stage(key: str, name: str = name) -> str:  # a field the pipeline's sections set: where they set it
            found = at(key)
            return at(key.removeprefix(name + ".")) if found == at("") and key.startswith(name + ".") else found

        for key in raw:
            if key not in STAGE_SECTIONS:
                where = "the pipeline's own (set it at the top)" if key in SECTIONS else "unknown"
                raise LowtuneError(
                    f"{at_stage(f'{name}.{key}')}: {name}.{key}: a stage sets {', '.join(STAGE_SECTIONS)}; "
                    f"{key} is {where}{did_you_mean(str(key), STAGE_SECTIONS) if key not in SECTIONS else ''}"
                )
        if "method" not in raw:
            raise LowtuneError(f"{at_stage(name)}: {name} names no method (e.g. method: sft)")
        method = coerce(raw["method"], str, f"{name}.method", at_stage(f"{name}.method"))
        if method == "pipeline":
            raise LowtuneError(f"{at_stage(f'{name}.method')}: {name} is one method; list a pipeline's stages here")
        if method == "reward":
            raise LowtuneError(
                f"{at_stage(f'{name}.method')}: {name}.method reward trains a reward model (a score head), not the "
                "model the pipeline carries on; train it as its own run and name it in a ppo stage's rewards.model"
            )
        own: dict[str, Any] = {"method": method}
        sections: dict[str, Any] = {}
        for section in ("data", "rewards", "eval", "augment", "budget"):
            value = raw.get(section) or {}
            if not isinstance(value, dict):
                raise LowtuneError(f"{at_stage(f'{name}.{section}')}: {name}.{section} must be a mapping of fields")
            fields = _coerce_fields(SECTIONS[section], value, f"{name}.{section}", at_stage)
            sections[section] = dataclasses.replace(copy.deepcopy(getattr(top, section)), **fields)
            if fields:
                own[section] = fields
        recipe = Recipe(method=method, model=top.model, lora=top.lora, output=top.output, **sections)
        recipe.check(at_stage, prefix=f"{name}.")
        train = raw.get("train") or {}
        if not isinstance(train, dict):
            raise LowtuneError(f"{at_stage(f'{name}.train')}: {name}.train must be a mapping of TRL config fields")
        try:
            shared = _check_train(method, top.train, at)
        except LowtuneError as e:
            raise LowtuneError(
                f"{e} ({name} is {method}; the pipeline's own train fields apply to every stage: move it into the "
                "stages that take it)"
            ) from None
        own_train = _coerce_fields(train_config_class(method), train, f"{name}.train", at_stage)
        recipe.train = {**shared, **own_train}
        if own_train:
            own["train"] = own_train
        built.append(Stage(own, recipe))
    return built


def _build_section(cls: type, value: Any, name: str, at: At) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise LowtuneError(f"{at(name)}: {name} must be a mapping of fields")
    return cls(**_coerce_fields(cls, value, name, at))


# Names people write for `train` fields, and the field they mean (when no field's name is close to theirs).
_SHORT_NAMES = {
    "lr": "learning_rate", "batch_size": "per_device_train_batch_size", "epochs": "num_train_epochs",
    "steps": "max_steps", "warmup": "warmup_steps", "grad_accum": "gradient_accumulation_steps",
}  # fmt: skip


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
            hint = did_you_mean(str(key), fields)
            if "did you mean" not in hint and _SHORT_NAMES.get(key) in fields:
                hint = f" — did you mean {_SHORT_NAMES[key]}?"
            raise LowtuneError(f"{at(dotted)}: unknown key {dotted}{hint}")
        out[key] = coerce(v, hints.get(key, Any), dotted, at(dotted))
    return out
