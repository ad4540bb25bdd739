"""Dataset loading and per-method schema checks.

Formats (one place, documented in the README):

- `messages`: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}; the last
  turn is the assistant's. For SFT it becomes a conversational prompt/completion pair (all turns
  before the last assistant reply / that reply), so the loss covers the final reply only.
- `prompt_completion`: {"prompt": str, "completion": str}; loss on the completion.
- `text`: {"text": str}; loss on every token.

Every row is checked before training; all bad rows are reported as `file:line: field: problem`
and nothing trains.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowtune.config import DataConfig
from lowtune.data import arithmetic
from lowtune.errors import LowtuneError

FORMATS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
ROLES = ("system", "user", "assistant", "tool")
MAX_REPORTED = 20


def load(cfg: DataConfig, kind: str = "sft"):
    """Load, validate and convert the training data for a method `kind` into a `datasets.Dataset`."""
    from datasets import Dataset

    rows = list(read_rows(cfg))
    if not rows:
        raise LowtuneError(f"{cfg.source}: no rows to train on")
    if cfg.max_rows is not None and len(rows) > cfg.max_rows:
        import random

        rows = random.Random(cfg.seed).sample(rows, cfg.max_rows)
    fmt = cfg.format if cfg.format != "auto" else detect_format(rows[0][1], rows[0][0])
    if kind == "sft":
        records = validate_sft(rows, fmt)
    else:
        raise ValueError(f"unknown data kind {kind}")
    return Dataset.from_list(records)


def read_rows(cfg: DataConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) pairs; the location is `file:line` or `name[split] row i`."""
    if cfg.source == "arithmetic":
        for i, p in enumerate(arithmetic.train(cfg.n_train, cfg.digits, cfg.operations, cfg.seed)):
            messages = [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.solution}]
            yield f"arithmetic row {i}", {"messages": messages}
        return
    path = Path(cfg.source).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in READERS and cfg.split in f.stem)
        if not files:
            raise LowtuneError(f"{path}: no {cfg.split} file (.jsonl/.json/.csv/.parquet) in this directory")
        for f in files:
            yield from READERS[f.suffix](f)
        return
    if path.suffix in READERS and path.exists():
        yield from READERS[path.suffix](path)
        return
    if path.suffix in READERS or path.exists() or cfg.source.startswith((".", "/", "~")):
        raise LowtuneError(f"data file {cfg.source} not found (formats: .jsonl, .json, .csv, .parquet)")
    yield from _read_hub(cfg)


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LowtuneError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise LowtuneError(f"{path}:{n}: each line must be a JSON object, got {type(row).__name__}")
            yield f"{path}:{n}", row


def _read_json(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LowtuneError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise LowtuneError(f"{path}: expected a JSON list of objects (or use .jsonl)")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise LowtuneError(f"{path}: item {i} must be an object, got {type(row).__name__}")
        yield f"{path} item {i}", row


def _read_csv(path: Path) -> Iterator[tuple[str, dict]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield f"{path}:{reader.line_num}", dict(row)


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    from datasets import Dataset

    for i, row in enumerate(Dataset.from_parquet(str(path))):
        yield f"{path} row {i}", row


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _read_hub(cfg: DataConfig) -> Iterator[tuple[str, dict]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(cfg.source, cfg.subset, split=cfg.split)
    except Exception as e:  # network, missing dataset, bad split: all user-fixable
        raise LowtuneError(
            f"could not load dataset {cfg.source!r} (split {cfg.split}) from the hub: "
            f"{str(e).splitlines()[0]}; for local data give a path to a .jsonl/.json/.csv/.parquet file"
        ) from None
    for i, row in enumerate(ds):
        yield f"{cfg.source}[{cfg.split}] row {i}", row


def detect_format(row: dict, where: str) -> str:
    for fmt, keys in FORMATS.items():
        if all(k in row for k in keys):
            return fmt
    raise LowtuneError(
        f"{where}: cannot tell the data format from columns {sorted(row)}; expected "
        "messages, prompt + completion, or text (or set data.format)"
    )


def validate_sft(rows: list[tuple[str, dict]], fmt: str) -> list[dict]:
    """Check every row for SFT and convert it to a TRL SFT record; raise listing all bad rows."""
    records, problems = [], []
    for where, row in rows:
        try:
            records.append(_sft_record(row, fmt, where))
        except _RowError as e:
            problems.append(f"{where}: {e}")
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise LowtuneError(
            f"{len(problems)} bad row(s) in the {fmt} data; nothing was trained. Fix them and rerun:\n  {shown}{more}"
        )
    return records


class _RowError(Exception):
    pass


def _text_field(row: dict, key: str) -> str:
    if key not in row or row[key] is None:
        raise _RowError(f"field '{key}' is missing")
    value = row[key]
    if not isinstance(value, str):
        raise _RowError(f"field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _RowError(f"field '{key}' is empty")
    return value


def _sft_record(row: dict, fmt: str, where: str) -> dict:
    if fmt == "text":
        return {"text": _text_field(row, "text")}
    if fmt == "prompt_completion":
        return {"prompt": _text_field(row, "prompt"), "completion": _text_field(row, "completion")}
    messages = row.get("messages")
    if messages is None:
        raise _RowError("field 'messages' is missing")
    if not isinstance(messages, list) or not messages:
        raise _RowError("field 'messages' must be a non-empty list of {role, content}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _RowError(f"field 'messages[{i}]' must be an object with role and content")
        if m.get("role") not in ROLES:
            raise _RowError(f"field 'messages[{i}].role' is {m.get('role')!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise _RowError(f"field 'messages[{i}].content' is missing or empty")
    if messages[-1]["role"] != "assistant":
        raise _RowError(f"field 'messages[{len(messages) - 1}].role': the last turn must be the assistant's")
    if len(messages) < 2:
        raise _RowError("field 'messages' needs at least one turn before the assistant reply")
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return {"prompt": clean[:-1], "completion": clean[-1:]}
