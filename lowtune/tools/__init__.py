"""Tools for Toolformer-style augmentation and tool-augmented generation (Schick et al. 2023).

A tool has a `name` (as it appears in a call, `[Calculator(400 / 1400) -> 0.29]`), a one-line
`description`, few-shot `examples` ((plain text, text with a call) pairs for its annotation prompt),
and `__call__(arg: str) -> str | None`, None meaning no result. Two optional attributes steer
Toolformer's augmentation: `precedes`, a regular expression for what a result can stand before (the
calculator's: a number; positions elsewhere are not sampled), and `usable(arg, before) -> bool`, whether
a call can stand after the text `before` (the calculator's: every number in it is already written).
`run_tool` is how lowtune calls one: with a time limit, and an exception or a non-string result counts
as a failed call (None), so a misbehaving tool never stops a pipeline.

Builtin: `calculator`, `calendar`, `search` (BM25 over a local corpus). A user tool is named by its
import path, `package.module:attribute` (a tool object, or a class or function that makes one).
This package imports nothing else of lowtune but its error type.
"""

from __future__ import annotations

import importlib
import re
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from lowtune.errors import LowtuneError, did_you_mean
from lowtune.tools.calculator import calculator
from lowtune.tools.calendar import Calendar
from lowtune.tools.search import Search

__all__ = ["BUILTIN", "Calculator", "Calendar", "Search", "calculator", "load_tool", "run_tool"]

TIME_LIMIT_S = 2.0
MAX_RESULT = 500  # characters of a result kept


_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_OPERATION = re.compile(r"[\d.)]\s*[-+*/×÷]\s*[-(\d.]")


class Calculator:
    name = "Calculator"
    description = "Computes + - * / on numbers, e.g. Calculator(400 / 1400) -> 0.29."
    examples = [
        ("Out of 1400 participants, 400 (or 29%) passed the test.",
         "Out of 1400 participants, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed the test."),
        ("The shop sold 12 boxes of 24 eggs, 288 eggs in all.",
         "The shop sold 12 boxes of 24 eggs, [Calculator(12 * 24) -> 288] 288 eggs in all."),
        ("Jo had 350 marbles and lost 125, so 225 marbles were left.",
         "Jo had 350 marbles and lost 125, so [Calculator(350 - 125) -> 225] 225 marbles were left."),
        ("The bus drove 412 km in the morning and 239 km after lunch, 651 km that day.",
         "The bus drove 412 km in the morning and 239 km after lunch, [Calculator(412 + 239) -> 651] 651 km that day."),
    ]  # fmt: skip
    precedes = r"[$€£]?-?\d"  # a result only helps predict a number: positions elsewhere are not sampled

    def __call__(self, arg: str) -> str | None:
        # A call must compute something: "[Calculator(13780) -> 13780]" only copies a number the annotating
        # model read further on in the text, and teaches nothing a model could repeat without that text.
        return calculator(arg) if _OPERATION.search(arg) else None

    @staticmethod
    def usable(arg: str, before: str) -> bool:
        """Toolformer augmentation: a call can stand where every number in it has already been written."""
        said = {n.replace(",", "") for n in _NUMBER.findall(before)}
        return all(n.replace(",", "") in said for n in _NUMBER.findall(arg))


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
