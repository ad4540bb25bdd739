"""Rows from any source, and how they are checked.

`read_rows` yields (location, row) pairs from the builtin tasks, a data file, a directory of them or
a Hugging Face dataset. A method's loader turns each row into a training record with a `build`
function that raises `RowError` for a bad row; `validate` runs it over every row and reports all bad
rows at once as `file:line: field: problem`, so nothing trains on data with mistakes in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowtune.config import DataConfig
from lowtune.data import arithmetic, multistep
from lowtune.data.arithmetic_text import story_problems
from lowtune.data.formats import ROLES
from lowtune.data.readers import is_data_file, read_file
from lowtune.errors import LowtuneError

MAX_REPORTED = 20


class RowError(Exception):
    """One row's problem (which field, what is wrong); `validate` puts the row's location in front."""


def read_rows(cfg: DataConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) pairs; the location is `file:line` or `name[split] row i`."""
    if cfg.source in ("arithmetic", "multistep"):
        if cfg.source == "arithmetic":
            problems = arithmetic.train(cfg.n_train, cfg.digits, cfg.operations, cfg.seed, cfg.operands)
        else:  # the reply is the worked trace, <think>...</think><answer>...</answer> (or the answer alone)
            problems = multistep.train(cfg.n_train, cfg.digits, cfg.steps, cfg.seed)
        for i, p in enumerate(problems):
            reply = p.solution if cfg.source == "arithmetic" or cfg.traces else f"<answer>{p.answer}</answer>"
            messages = [{"role": "user", "content": p.question}, {"role": "assistant", "content": reply}]
            yield f"{cfg.source} row {i}", {"messages": messages, "answer": str(p.answer)}
        return
    if cfg.source == "arithmetic-text":
        for i, (question, story, answer) in enumerate(story_problems(cfg.n_train, cfg.digits, cfg.seed)):
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": story}]
            yield f"arithmetic-text row {i}", {"messages": messages, "answer": str(answer)}
        return
    path = Path(cfg.source).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if is_data_file(f) and cfg.split in f.name)
        if not files:
            raise LowtuneError(f"{path}: no {cfg.split} file (.jsonl/.json/.csv/.parquet) in this directory")
        for f in files:
            yield from read_file(f)
        return
    if is_data_file(path) and path.exists():
        yield from read_file(path)
        return
    if is_data_file(path) or path.exists() or cfg.source.startswith((".", "/", "~")):
        raise LowtuneError(
            f"data file {cfg.source} not found (formats: .jsonl, .json, .csv, each optionally .gz, and .parquet)"
        )
    yield from read_hub(cfg)


def read_hub(cfg: DataConfig) -> Iterator[tuple[str, dict]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(cfg.source, cfg.subset, data_dir=cfg.data_dir, split=cfg.split)
    except Exception as e:  # network, missing dataset, bad split: all user-fixable
        raise LowtuneError(
            f"could not load dataset {cfg.source!r} (split {cfg.split}) from the hub: "
            f"{str(e).splitlines()[0]}; for local data give a path to a .jsonl/.json/.csv/.parquet file"
        ) from None
    for i, row in enumerate(ds):
        yield f"{cfg.source}[{cfg.split}] row {i}", row


def validate(rows: list[tuple[str, dict]], fmt: str, build, bad_rows: str = "error") -> tuple[list[dict], list[str]]:
    """Check every row and convert it with `build`; returns (records, skipped rows as `where: problem`).

    With bad_rows="error" any bad row raises, listing all of them; with "skip" they are dropped and
    reported on the console (and returned, for summary.json), never silently.
    """
    records, problems = [], []
    for where, row in rows:
        try:
            records.append(build(row, fmt))
        except RowError as e:
            problems.append(f"{where}: {e}")
    if not problems:
        return records, []
    shown = "\n  ".join(problems[:MAX_REPORTED])
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    if bad_rows == "skip" and records:
        from lowtune import ui

        ui.say(
            f"skipped {len(problems)} bad row(s) of {len(rows)} in the {fmt} data "
            f"(data.bad_rows=skip):\n  {shown}{more}"
        )
        return records, problems
    raise LowtuneError(
        f"{len(problems)} bad row(s) in the {fmt} data; nothing was trained. Fix them "
        f"(or set data.bad_rows=skip to drop them) and rerun:\n  {shown}{more}"
    )


# ---------------------------------------------------------------- field checks, for `build` functions


def present(row: dict, key: str) -> Any:
    """The value of `key`; RowError when the row has none."""
    if key not in row or row[key] is None:
        raise RowError(f"field '{key}' is missing")
    return row[key]


def text_field(row: dict, key: str) -> str:
    """The non-empty string in `key`."""
    value = present(row, key)
    if not isinstance(value, str):
        raise RowError(f"field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"field '{key}' is empty")
    return value


def messages_field(row: dict, field: str = "messages", last_assistant: bool = True) -> list[dict]:
    """The conversation in `field` as clean {role, content} messages; with `last_assistant`, it must end with
    the assistant's reply and have a turn before it. A tool exchange keeps its parts (TRL's tool-calling format):
    an assistant turn's `tool_calls` (its content may then be empty), a tool message's `tool_call_id` and `name`."""
    messages = row.get(field)
    if messages is None:
        raise RowError(f"field '{field}' is missing")
    if not isinstance(messages, list) or not messages:
        raise RowError(f"field '{field}' must be a non-empty list of {{role, content}}")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RowError(f"field '{field}[{i}]' must be an object with role and content")
        if m.get("role") not in ROLES:
            raise RowError(f"field '{field}[{i}].role' is {m.get('role')!r}; use one of {', '.join(ROLES)}")
        calls = m.get("tool_calls") if m["role"] == "assistant" else None  # None or [] where a dataset has no call
        if calls:
            tool_calls_field(calls, f"{field}[{i}].tool_calls")
        content = m.get("content")
        if not (isinstance(content, str) and content.strip()) and not (calls and content in (None, "")):
            raise RowError(f"field '{field}[{i}].content' is missing or empty")
        kept = {"tool_calls": calls} if calls else {}
        if m["role"] == "tool":
            kept = {k: m[k] for k in ("tool_call_id", "name") if isinstance(m.get(k), str)}
        clean.append({"role": m["role"], "content": content or "", **kept})
    if last_assistant:
        if messages[-1]["role"] != "assistant":
            raise RowError(f"field '{field}[{len(messages) - 1}].role': the last turn must be the assistant's")
        if len(messages) < 2:
            raise RowError(f"field '{field}' needs at least one turn before the assistant reply")
    return clean


def tool_calls_field(calls, where: str) -> None:
    """An assistant turn's calls: a list of {"type": "function", "function": {"name", "arguments"}}."""
    if not isinstance(calls, list):
        raise RowError(f"field '{where}' must be a list of calls")
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowError(
                f"field '{where}[{j}].function.name' is missing; a call is "
                '{"type": "function", "function": {"name": ..., "arguments": {...}}}'
            )
        if not isinstance(function.get("arguments", {}), (dict, str)):
            raise RowError(f"field '{where}[{j}].function.arguments' must be an object (or its JSON text)")


def tools_field(row: dict) -> str:
    """The row's `tools` (the JSON schemas of the tools its calls use) as JSON text, which TRL reads: a list of
    {"type": "function", "function": {"name", ...}} or that list's JSON text."""
    tools = row["tools"]
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError as e:
            raise RowError(f"field 'tools' is not JSON ({e})") from None
    if not isinstance(tools, list):
        raise RowError("field 'tools' must be a list of JSON schemas (or its JSON text)")
    for j, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RowError(
                f"field 'tools[{j}].function.name' is missing; a tool is "
                '{"type": "function", "function": {"name", "description", "parameters"}}'
            )
    return json.dumps(tools)
