"""Toolformer's call syntax: plain text in the model's vocabulary, `[Calculator(400 / 1400) -> 0.29]`.

A call is "[", the tool's name, its argument in parentheses, then optionally "->" and the result, and
"]". `parse_calls` finds the well-formed ones (anything else stays plain text), `format_call` writes
one, `strip_calls` removes them, `open_call` finds the call a model has written up to its "->" and
waits on, and `open_bracket_ids` are the tokens that start a call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ARROW = "->"
_HEAD = r"\[(?P<tool>[A-Za-z_][A-Za-z0-9_]*)\((?P<arg>[^\[\]()]*)\)"  # "[Tool(arg)"
_CALL = re.compile(_HEAD + r"(?:\s*->\s*(?P<result>[^\[\]]*?))?\s*\]")
_OPEN_CALL = re.compile(_HEAD + r"\s*->\s*$")


@dataclass(frozen=True)
class Call:
    """One API call found in text: its character span, tool name, argument and result (None: no result)."""

    start: int
    end: int
    tool: str
    arg: str
    result: str | None


def parse_calls(text: str) -> list[Call]:
    """Every well-formed call in `text`, in order. Malformed ones (unclosed, nested, no parentheses) are
    left as plain text."""
    if not isinstance(text, str):
        return []
    return [
        Call(m.start(), m.end(), m.group("tool"), m.group("arg").strip(),
             None if m.group("result") is None else m.group("result").strip())
        for m in _CALL.finditer(text)
    ]  # fmt: skip


def open_call(text: str) -> Call | None:
    """The call `text` ends in, written up to its arrow and waiting for the result ("... [Calculator(2 + 2) ->")."""
    m = _OPEN_CALL.search(text)
    return None if m is None else Call(m.start(), m.end(), m.group("tool"), m.group("arg").strip(), None)


def format_call(tool: str, arg: str, result: str | None = None) -> str:
    return f"[{tool}({arg})]" if result is None else f"[{tool}({arg}) {ARROW} {result}]"


def strip_calls(text: str) -> str:
    """The text without its calls (and the space before each)."""
    out, last = [], 0
    for call in parse_calls(text):
        out.append(text[last : call.start].rstrip(" ") if call.start > last else "")
        last = call.end
    out.append(text[last:])
    return "".join(out)


def open_bracket_ids(tokenizer) -> list[int]:
    """The vocabulary's tokens that read as "[" (with or without a leading space): how a call starts."""
    ids = sorted(
        {i for tok, i in tokenizer.get_vocab().items() if tokenizer.convert_tokens_to_string([tok]).strip() == "["}
    )
    if not ids:
        raise ValueError("the tokenizer has no token for '['; Toolformer's call syntax needs one")
    return ids
