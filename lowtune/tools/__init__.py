"""Tools for Toolformer-style augmentation and tool-augmented generation (Schick et al. 2023).

A tool has a `name` (as it appears in a call, `[Calculator(400 / 1400) -> 0.29]`), a one-line
`description`, few-shot `examples` ((plain text, text with a call) pairs for its annotation prompt),
and `__call__(arg: str) -> str | None`, None meaning no result. Two optional attributes steer
Toolformer's augmentation: `precedes`, a regular expression for what a result can stand before (the
calculator's: a number; positions elsewhere are not sampled), and `usable(arg, before) -> bool`, whether
a call can stand after the text `before` (the calculator's: every number in it is already written).
A third, `function`, is a documented Python function with the tool's parameters, from which its JSON
schema for native tool calls is made (transformers' `get_json_schema`; the calculator's: `calculator`).
`run_tool` is how lowtune calls one: with a time limit, and an exception or a non-string result counts
as a failed call (None), so a misbehaving tool never stops a pipeline.

Builtin, one module each: `calculator`, `calendar`, `search` (BM25 over a local corpus). A user tool
is named by its import path, `package.module:attribute` (a tool object, or a class or function that
makes one). This package imports nothing else of lowtune but its error type; Toolformer's augmentation
and tool-augmented generation, which use these tools, are in `lowtune.toolformer`.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from lowtune.errors import LowtuneError, did_you_mean
from lowtune.tools.calculator import Calculator, calculator
from lowtune.tools.calendar import Calendar
from lowtune.tools.search import Search

__all__ = ["BUILTIN", "Calculator", "Calendar", "Search", "calculator", "load_tool", "run_tool"]

TIME_LIMIT_S = 2.0
MAX_RESULT = 500  # characters of a result kept
BUILTIN = {"calculator": Calculator, "calendar": Calendar, "search": Search}

_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lowtune-tool")


def run_tool(tool, arg: str, time_limit: float = TIME_LIMIT_S) -> str | None:
    """`tool(arg)` as a string result, or None when it fails, raises, returns a non-string or runs past
    `time_limit` seconds. (Python cannot stop a thread: a tool that never returns keeps one worker busy;
    the builtin tools bound their inputs so they always return quickly.)"""
    try:
        result = _pool.submit(tool, arg).result(timeout=time_limit)
    except FutureTimeout:
        return None
    except Exception:  # noqa: BLE001 - any failure of a tool is a failed call
        return None
    if not isinstance(result, str) or not result.strip():
        return None
    return result.strip()[:MAX_RESULT]


def load_tool(spec: str):
    """A builtin tool by name (`calculator`, `calendar`, `search`) or a user tool by import path `module:attr`."""
    if not isinstance(spec, str) or not spec.strip():
        raise LowtuneError(f"tool {spec!r}: give a builtin name ({', '.join(BUILTIN)}) or module.path:attribute")
    spec = spec.strip()
    if ":" not in spec:
        if spec.lower() not in BUILTIN:
            raise LowtuneError(
                f"unknown tool {spec}{did_you_mean(spec.lower(), BUILTIN)}; a user tool is module.path:attribute"
            )
        return BUILTIN[spec.lower()]()
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or not all(p.isidentifier() for p in [*module_name.split("."), attribute]):
        raise LowtuneError(f"tool {spec!r}: write a user tool as module.path:attribute, e.g. mytools:Weather")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise LowtuneError(f"tool {spec}: cannot import {module_name} ({e})") from None
    if not hasattr(module, attribute):
        raise LowtuneError(f"tool {spec}: {module_name} has no attribute {attribute}")
    tool = getattr(module, attribute)
    if isinstance(tool, type):
        tool = tool()
    missing = [a for a in ("name", "description", "examples") if not hasattr(tool, a)]
    if missing or not callable(tool):
        what = f"lacks {', '.join(missing)}" if missing else "is not callable"
        raise LowtuneError(
            f"tool {spec} {what}; a tool has name, description, examples and __call__(arg) -> str | None"
        )
    return tool
