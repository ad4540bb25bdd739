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
from dataclasses import dataclass

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


def texts(n: int, digits: int = 3, seed: int = 0, heldout: int = 500) -> list[str]:
    """`n` stories with arithmetic, none built on a held-out word problem's numbers."""
    reserved = {(p.expression) for p in word_problems(heldout, digits)}
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        op, (a, b), story, _, _ = _draw(rng, digits)
        if f"{a} {op} {b}" not in reserved:
            out.append(story)
    return out
