"""GSM8K-format rows as held-out problems (`eval.task: gsm8k`, `lowtune eval --task gsm8k`).

A row is {"question": str, "answer": "...reasoning... #### 72"}; the reference is the number after the last
`####`. A reply is scored with the answer rule of `lowtune.rewards.extract_answer` (docs/rewards.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from lowtune.data.readers import is_data_file, read_file
from lowtune.data.records import gsm8k_answer
from lowtune.data.rows import RowError, text_field
from lowtune.errors import LowtuneError
from lowtune.rewards import to_number


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int | Fraction  # the number after "####"
    where: str  # file:line


def problems(path: str | Path, n: int) -> list[Problem]:
    """The first `n` rows of a GSM8K-format file (all of them when it has fewer). A missing file, or a row
    without a question or a `#### n` answer, is a one-line error naming the file and line."""
    path = Path(os.path.expanduser(path))  # "~user" of no user stays as it is
    if not path.is_file():
        raise LowtuneError(f"{path}: no such file; give GSM8K rows (question, answer ending in '#### n')")
    if not is_data_file(path):
        raise LowtuneError(f"{path}: not a data file (.jsonl, .json, .csv, each optionally .gz, or .parquet)")
    out = []
    for where, row in read_file(path):
        try:
            question, number = text_field(row, "question"), gsm8k_answer(row)[1]
        except RowError as e:
            raise LowtuneError(f"{where}: {e}") from None
        value = to_number(number)
        if value is None:
            raise LowtuneError(f"{where}: field 'answer': '#### {number}' is not a number")
        out.append(Problem(question, int(value) if value.denominator == 1 else value, where))
        if len(out) >= n:
            break
    if not out:
        raise LowtuneError(f"{path}: no rows")
    return out
