"""Text with arithmetic in it, for Toolformer-style augmentation, and word problems to test tool use.

`texts(n, digits, seed)`: short stories about shops, trips and prices in which two numbers appear
first and their sum, difference, product or quotient later ("... buys 12 pens at 24 dollars each
and pays 288 dollars."): the place where a calculator call helps predict the next number.

`word_problems(n, digits)`: held-out questions ("A farm has 345 cows and buys 278 more. How many
cows does it have now?") with integer answers. Problems are drawn from a fixed seed that training
texts never use, and texts whose number pair matches a held-out problem are skipped, so the two
never share a problem.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from lowtune.data.readers import is_data_file, read_file
from lowtune.errors import LowtuneError

NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Maya", "Ivan", "Zoe", "Ken", "Lea"]
ITEMS = ["pens", "apples", "books", "stamps", "shells", "cards", "boxes", "tickets", "plants", "coins"]
HELDOUT_SEED = 20260202

# (operation, story template, question template): a, b the numbers; r = the result; n a name; x items.
TEMPLATES = [
    ("+", "{n} had {a} {x} and was given {b} more, so {n} now has {r} {x}.",
     "{n} has {a} {x} and is given {b} more. How many {x} does {n} have now?"),
    ("+", "The train ran {a} km on Monday and {b} km on Tuesday, {r} km in all.",
     "A train runs {a} km on Monday and {b} km on Tuesday. How many km does it run in all?"),
    ("-", "A shop had {a} {x} and sold {b} of them, which left {r} {x} on the shelf.",
     "A shop has {a} {x} and sells {b} of them. How many {x} are left?"),
    ("*", "{n} bought {a} packs of {b} {x}, which makes {r} {x}.",
     "{n} buys {a} packs of {b} {x}. How many {x} is that?"),
    ("/", "{n} shared {a} {x} equally among {b} friends, and each friend got {r} {x}.",
     "{n} shares {a} {x} equally among {b} friends. How many {x} does each friend get?"),
]  # fmt: skip


@dataclass(frozen=True)
class WordProblem:
    question: str
    answer: int
    expression: str


def _numbers(rng: random.Random, op: str, digits: int) -> tuple[int, int, int]:
    low, high = 10 ** (digits - 1), 10**digits - 1
    if op == "/":  # a quotient that comes out even
        b = rng.randint(2, 9 if digits == 1 else 20)
        r = rng.randint(max(low // b, 1), max(high // b, 2))
        return b * r, b, r
    if op == "*":
        a, b = rng.randint(2, 9 if digits == 1 else 30), rng.randint(low, high)
        return a, b, a * b
    a, b = rng.randint(low, high), rng.randint(low, high)
    if op == "-":
        a, b = max(a, b), min(a, b)
    return a, b, a + b if op == "+" else a - b


def _draw(rng: random.Random, digits: int):
    op, story, question = rng.choice(TEMPLATES)
    a, b, r = _numbers(rng, op, digits)
    fill = dict(a=a, b=b, r=r, n=rng.choice(NAMES), x=rng.choice(ITEMS))
    return op, (a, b), story.format(**fill), question.format(**fill), r


def word_problems(n: int = 100, digits: int = 3) -> list[WordProblem]:
    """The first `n` held-out word problems with `digits`-digit numbers (the same list every time)."""
    rng = random.Random(HELDOUT_SEED + digits)
    out = []
    for _ in range(n):
        op, (a, b), _, question, r = _draw(rng, digits)
        out.append(WordProblem(question, r, f"{a} {op} {b}"))
    return out


def story_problems(n: int, digits: int = 3, seed: int = 0, heldout: int = 500) -> list[tuple[str, str, int]]:
    """`n` (question, story, answer) triples sharing their numbers, none built on a held-out word problem."""
    reserved = {p.expression for p in word_problems(heldout, digits)}
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        op, (a, b), story, question, r = _draw(rng, digits)
        if f"{a} {op} {b}" not in reserved:
            out.append((question, story, r))
    return out


def texts(n: int, digits: int = 3, seed: int = 0, heldout: int = 500) -> list[str]:
    """`n` stories with arithmetic, none built on a held-out word problem's numbers."""
    return [story for _, story, _ in story_problems(n, digits, seed, heldout)]


_GSM8K_CALL = re.compile(r"<<[^<>]*>>")


def gsm8k_text(question: str, answer: str) -> tuple[str, list[int]]:
    """A GSM8K row as plain text (question, then the solution with its `<<48/2=24>>` calculator annotations
    removed and `#### n` written out), and the character positions where the annotators put a call
    (right before the result they computed)."""
    solution, _, final = answer.partition("####")
    text, positions, last = question.strip() + "\n", [], 0
    for match in _GSM8K_CALL.finditer(solution):
        text += solution[last : match.start()]
        positions.append(len(text))
        last = match.end()
    text += solution[last:].rstrip()
    if final.strip():
        text += f"\nThe answer is {final.strip()}."
    return text, positions


def load_texts(source: str, n: int | None = None, seed: int = 0, digits: int = 3) -> tuple[list[str], list[list[int]]]:
    """Texts to augment, and per text the human call positions (GSM8K; empty lists otherwise).

    `source`: `arithmetic-text` (the builtin stories), or a .jsonl file of {"text"} rows or of GSM8K
    {"question", "answer"} rows. A bad row names its file and line."""
    if source == "arithmetic-text":
        count = n or 200
        return texts(count, digits, seed), [[] for _ in range(count)]
    path = Path(source)
    if not path.is_file() or not is_data_file(path):
        raise LowtuneError(f"texts {source}: neither `arithmetic-text` nor a data file (.jsonl, .json, .csv, .parquet)")
    out, human = [], []
    for where, row in read_file(path):  # any data format lowtune reads; a bad row names its file and line
        if isinstance(row.get("text"), str):
            out.append(row["text"])
            human.append([])
        elif isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
            text, positions = gsm8k_text(row["question"], row["answer"])
            out.append(text)
            human.append(positions)
        else:
            raise LowtuneError(f'{where}: a row needs "text", or "question" and "answer" (GSM8K)')
        if n is not None and len(out) >= n:
            break
    if not out:
        raise LowtuneError(f"{path}: no rows")
    return out, human
