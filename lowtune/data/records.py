"""Rows with one reply as training records (the formats are described in `lowtune.data`): prompt/completion
or text for SFT, a chat prompt and its reference `answer` for GRPO and PPO."""

from __future__ import annotations

import random
import re

from lowtune.config import DataConfig
from lowtune.data.formats import KINDS, detect_format
from lowtune.data.rows import RowError, messages_field, read_rows, text_field, tools_field, validate
from lowtune.errors import LowtuneError


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
        rows = random.Random(cfg.seed).sample(rows, cfg.max_rows)
    fmt = cfg.format if cfg.format != "auto" else detect_format(rows[0][1], rows[0][0], kind)
    if fmt not in KINDS[kind]:
        raise LowtuneError(
            f"{cfg.source}: {fmt} data cannot train this method; it needs one of {', '.join(KINDS[kind])}"
        )
    build = sft_record if kind == "sft" else prompt_record
    records, _ = validate(rows, fmt, build, cfg.bad_rows)
    if any("tools" in r for r in records):  # Dataset.from_list takes its columns from the first record
        for r in records:
            r.setdefault("tools", None)
    if system_prompt:
        for r in records:
            if isinstance(r.get("prompt"), list) and r["prompt"][0]["role"] != "system":
                r["prompt"] = [{"role": "system", "content": system_prompt}, *r["prompt"]]
    return Dataset.from_list(records)


def sft_record(row: dict, fmt: str) -> dict:
    if fmt == "text":
        return {"text": text_field(row, "text")}
    if fmt == "prompt_completion":
        return {"prompt": text_field(row, "prompt"), "completion": text_field(row, "completion")}
    if fmt == "gsm8k":
        question, answer = text_field(row, "question"), gsm8k_answer(row)[0]
        return {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}],
        }
    clean = messages_field(row)
    # The completion is the last reply, and with a tool exchange before it the calls and results too: the model
    # learns to make the calls.
    start = len(clean) - 1
    while start > 0 and (clean[start - 1]["role"] == "tool" or "tool_calls" in clean[start - 1]):
        start -= 1
    if start == 0:
        raise RowError("field 'messages' needs a user turn before the assistant's tool calls")
    record = {"prompt": clean[:start], "completion": clean[start:]}
    if row.get("tools") is not None:
        record["tools"] = tools_field(row)
    return record


def prompt_record(row: dict, fmt: str) -> dict:
    if fmt == "gsm8k":
        return {"prompt": [{"role": "user", "content": text_field(row, "question")}], "answer": gsm8k_answer(row)[1]}
    answer = row.get("answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise RowError("field 'answer' is missing or empty (rewards compare completions against it)")
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise RowError(f"field 'answer' must be a string or a number, got {type(answer).__name__}")
    if fmt == "messages":
        prompt = messages_field(row)[:-1]  # the reference reply is not part of the prompt
    elif isinstance(row.get("prompt"), list):
        prompt = messages_field(row, field="prompt", last_assistant=False)
    else:
        prompt = [{"role": "user", "content": text_field(row, "prompt")}]
    return {"prompt": prompt, "answer": str(answer)}


def gsm8k_answer(row: dict) -> tuple[str, str]:
    """(the reasoning without calculator annotations, the number after `####`)."""
    text = text_field(row, "answer")
    if "####" not in text:
        raise RowError("field 'answer' has no final '#### <number>' line")
    reasoning, final = text.rsplit("####", 1)
    number = final.strip().replace(",", "")
    if not number:
        raise RowError("field 'answer' has nothing after '####'")
    return re.sub(r"<<[^>]*>>", "", text), number
