"""Dataset loading and per-method schema checks.

Formats (one place, documented in the README):

- `messages`: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}; the last
  turn is the assistant's. For SFT it becomes a conversational prompt/completion pair (all turns
  before the last assistant reply / that reply), so the loss covers the final reply only.
- `prompt_completion`: {"prompt": str, "completion": str}; loss on the completion.
- `text`: {"text": str}; loss on every token.
- `prompt_answer`: {"prompt": str or messages, "answer": str or number}; for GRPO (rewards compare
  against `answer`).
- `gsm8k`: {"question": str, "answer": "...reasoning... #### 72"}; GRPO gets the question and the
  number after `####`; SFT learns the reasoning (calculator annotations `<<48/2=24>>` removed).

Every row is checked before training; all bad rows are reported as `file:line: field: problem`
and nothing trains. A configured system prompt is prepended to prompts that have none.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowtune.config import DataConfig
from lowtune.data import arithmetic
from lowtune.errors import LowtuneError

FORMATS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "prompt_answer": ("prompt", "answer"),
    "gsm8k": ("question", "answer"),
    "text": ("text",),
}
# Which formats each kind of training data accepts.
KINDS = {
    "sft": ("messages", "prompt_completion", "text", "gsm8k"),
    "prompt": ("messages", "prompt_answer", "gsm8k"),
}
ROLES = ("system", "user", "assistant", "tool")
MAX_REPORTED = 20


def load(cfg: DataConfig, kind: str = "sft", system_prompt: str | None = None):
    """Load, validate and convert training data into a `datasets.Dataset`.

    `kind` is `sft` (prompt/completion or text records) or `prompt` (chat prompt + reference
    `answer`, for GRPO). `system_prompt`, when given, is prepended to prompts without one.
    """
    from datasets import Dataset

    rows = list(read_rows(cfg))
    if not rows:
        raise LowtuneError(f"{cfg.source}: no rows to train on")
    if cfg.max_rows is not None and len(rows) > cfg.max_rows:
        import random

        rows = random.Random(cfg.seed).sample(rows, cfg.max_rows)
    fmt = cfg.format if cfg.format != "auto" else detect_format(rows[0][1], rows[0][0])
    if fmt not in KINDS[kind]:
        raise LowtuneError(
            f"{cfg.source}: {fmt} data cannot train this method; it needs one of {', '.join(KINDS[kind])}"
        )
    build = _sft_record if kind == "sft" else _prompt_record
    records, _ = validate(rows, fmt, build, cfg.bad_rows)
    if system_prompt:
        for r in records:
            if isinstance(r.get("prompt"), list) and r["prompt"][0]["role"] != "system":
                r["prompt"] = [{"role": "system", "content": system_prompt}, *r["prompt"]]
    return Dataset.from_list(records)


def read_rows(cfg: DataConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) pairs; the location is `file:line` or `name[split] row i`."""
    if cfg.source == "arithmetic":
        for i, p in enumerate(arithmetic.train(cfg.n_train, cfg.digits, cfg.operations, cfg.seed, cfg.operands)):
            messages = [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.solution}]
            yield f"arithmetic row {i}", {"messages": messages, "answer": str(p.answer)}
        return
    if cfg.source == "arithmetic-text":
        from lowtune.data.arithmetic_text import story_problems

        for i, (question, story, answer) in enumerate(story_problems(cfg.n_train, cfg.digits, cfg.seed)):
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": story}]
            yield f"arithmetic-text row {i}", {"messages": messages, "answer": str(answer)}
        return
    path = Path(cfg.source).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if _suffix(f) in READERS and cfg.split in f.name)
        if not files:
            raise LowtuneError(f"{path}: no {cfg.split} file (.jsonl/.json/.csv/.parquet) in this directory")
        for f in files:
            yield from _read(f)
        return
    if _suffix(path) in READERS and path.exists():
        yield from _read(path)
        return
    if _suffix(path) in READERS or path.exists() or cfg.source.startswith((".", "/", "~")):
        raise LowtuneError(
            f"data file {cfg.source} not found (formats: .jsonl, .json, .csv, each optionally .gz, and .parquet)"
        )
    yield from _read_hub(cfg)


def _read(path: Path) -> Iterator[tuple[str, dict]]:
    """The file's rows; a file that is not what its name says ends in one clear error."""
    import zlib

    try:
        yield from READERS[_suffix(path)](path)
    except UnicodeDecodeError as e:
        raise LowtuneError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise LowtuneError(f"{path}: not a complete gzip file ({e})") from None
    except csv.Error as e:
        raise LowtuneError(f"{path}: not valid CSV ({e})") from None


def _suffix(path: Path) -> str:
    """The format suffix, looking through a .gz: data.jsonl.gz -> .jsonl."""
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def _open(path: Path, **kwargs):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", **kwargs)
    return path.open(encoding="utf-8", **kwargs)


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with _open(path) as f:
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
        with _open(path) as f:
            data = json.loads(f.read())
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
    with _open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield f"{path}:{reader.line_num}", dict(row)


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 (pyarrow raises several types for a damaged file)
        raise LowtuneError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row {i}", row


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _read_hub(cfg: DataConfig) -> Iterator[tuple[str, dict]]:
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


def detect_format(row: dict, where: str) -> str:
    for fmt, keys in FORMATS.items():
        if all(k in row for k in keys):
            return fmt
    raise LowtuneError(
        f"{where}: cannot tell the data format from columns {sorted(row)}; expected "
        "messages, prompt + completion, or text (or set data.format)"
    )


def validate(rows: list[tuple[str, dict]], fmt: str, build, bad_rows: str = "error") -> tuple[list[dict], list[str]]:
    """Check every row and convert it with `build`; returns (records, skipped rows as `where: problem`).

    With bad_rows="error" any bad row raises, listing all of them; with "skip" they are dropped and
    reported on the console (and returned, for summary.json), never silently.
    """
    records, problems = [], []
    for where, row in rows:
        try:
            records.append(build(row, fmt))
        except _RowError as e:
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


def _sft_record(row: dict, fmt: str) -> dict:
    if fmt == "text":
        return {"text": _text_field(row, "text")}
    if fmt == "prompt_completion":
        return {"prompt": _text_field(row, "prompt"), "completion": _text_field(row, "completion")}
    if fmt == "gsm8k":
        question, answer = _text_field(row, "question"), _gsm8k_answer(row)[0]
        return {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}],
        }
    clean = _messages(row)
    return {"prompt": clean[:-1], "completion": clean[-1:]}


def _prompt_record(row: dict, fmt: str) -> dict:
    if fmt == "gsm8k":
        return {"prompt": [{"role": "user", "content": _text_field(row, "question")}], "answer": _gsm8k_answer(row)[1]}
    answer = row.get("answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise _RowError("field 'answer' is missing or empty (rewards compare completions against it)")
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise _RowError(f"field 'answer' must be a string or a number, got {type(answer).__name__}")
    if fmt == "messages":
        prompt = _messages(row)[:-1]  # the reference reply is not part of the prompt
    elif isinstance(row.get("prompt"), list):
        prompt = _messages({"messages": row["prompt"]}, field="prompt", last_assistant=False)
    else:
        prompt = [{"role": "user", "content": _text_field(row, "prompt")}]
    return {"prompt": prompt, "answer": str(answer)}


def _gsm8k_answer(row: dict) -> tuple[str, str]:
    """(the reasoning without calculator annotations, the number after `####`)."""
    text = _text_field(row, "answer")
    if "####" not in text:
        raise _RowError("field 'answer' has no final '#### <number>' line")
    reasoning, final = text.rsplit("####", 1)
    number = final.strip().replace(",", "")
    if not number:
        raise _RowError("field 'answer' has nothing after '####'")
    return re.sub(r"<<[^>]*>>", "", text), number


def _messages(row: dict, field: str = "messages", last_assistant: bool = True) -> list[dict]:
    messages = row.get(field)
    if messages is None:
        raise _RowError(f"field '{field}' is missing")
    if not isinstance(messages, list) or not messages:
        raise _RowError(f"field '{field}' must be a non-empty list of {{role, content}}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _RowError(f"field '{field}[{i}]' must be an object with role and content")
        if m.get("role") not in ROLES:
            raise _RowError(f"field '{field}[{i}].role' is {m.get('role')!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise _RowError(f"field '{field}[{i}].content' is missing or empty")
    if last_assistant:
        if messages[-1]["role"] != "assistant":
            raise _RowError(f"field '{field}[{len(messages) - 1}].role': the last turn must be the assistant's")
        if len(messages) < 2:
            raise _RowError(f"field '{field}' needs at least one turn before the assistant reply")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


from lowtune.data.preference import Pairs, load_pairs  # noqa: E402  (it builds on the readers above)

__all__ = ["Pairs", "load", "load_pairs", "read_rows", "validate"]
