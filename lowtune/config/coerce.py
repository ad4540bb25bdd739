"""Type coercion: a YAML value converted to a field's declared type, or a LowtuneError naming the field."""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

from lowtune.errors import LowtuneError, did_you_mean


def choose_one_of(value: str, names: list[str]) -> str:
    """'choose one of a, b, c', with ' — did you mean b?' when one of them is close to `value`."""
    hint = did_you_mean(value, names)
    return f"choose one of {', '.join(names)}{hint if 'did you mean' in hint else ''}"


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert a YAML value to the declared type, or raise naming the field."""
    if tp is Any or tp is typing.Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        # transformers writes `SchedulerType | str`: the string must still be one of the enum's values.
        for option in options:
            if isinstance(option, type) and issubclass(option, enum.Enum):
                return coerce(value, option, key, where)
        # Prefer an exact type match before trying conversions (e.g. str stays str).
        for option in sorted(options, key=lambda o: not (isinstance(o, type) and isinstance(value, o))):
            if option is type(None):
                continue
            try:
                return coerce(value, option, key, where)
            except LowtuneError:
                pass
        hint = (
            " (quote text that contains ': ' or brackets)" if str in options and isinstance(value, (dict, list)) else ""
        )
        raise LowtuneError(f"{where}: {key} = {value!r} is not a valid {type_name(tp)}{hint}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise LowtuneError(f"{where}: {key} should be a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [coerce(v, inner, key, where) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise LowtuneError(f"{where}: {key} should be a mapping, got {value!r}")
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise LowtuneError(f"{where}: {key} must be one of {typing.get_args(tp)}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise LowtuneError(f"{where}: {key} should be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise LowtuneError(f"{where}: {key} should be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise LowtuneError(f"{where}: {key} should be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise LowtuneError(f"{where}: {key} should be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise LowtuneError(f"{where}: {key} should be a string, got {value!r} (quote text that contains ': ')")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        valid = [m.value for m in tp]
        if value in valid:
            return value
        raise LowtuneError(f"{where}: {key} is {value!r}; {choose_one_of(str(value), list(map(str, valid)))}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise LowtuneError(f"{where}: {key} should be {type_name(tp)}, got {value!r}")
    return value


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
