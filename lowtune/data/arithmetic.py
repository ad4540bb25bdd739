"""The builtin verifiable task: integer arithmetic with configurable digits and operations.

Deterministic by seed. The held-out set depends only on (digits, operations) and is drawn first;
training problems are drawn from the rest, so the two never overlap whatever the training seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lowtune.errors import LowtuneError

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
HELDOUT_SEED = 20260101
HELDOUT_SIZE = 500


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def answer(self) -> int:
        return OPERATIONS[self.op](self.a, self.b)

    @property
    def question(self) -> str:
        return f"What is {self.a} {self.op} {self.b}?"

    @property
    def solution(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.answer}"


def _space(digits: int, operations: list[str]) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return (10**digits - low) ** 2 * len(operations)


def _draw(rng: random.Random, digits: int, operations: list[str]) -> Problem:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    high = 10**digits - 1
    return Problem(rng.randint(low, high), rng.choice(operations), rng.randint(low, high))


def _unique(rng: random.Random, n: int, digits: int, operations: list[str], exclude: set[Problem]) -> list[Problem]:
    available = _space(digits, operations) - len(exclude)
    n = min(n, available)
    seen: set[Problem] = set()
    out = []
    while len(out) < n:
        p = _draw(rng, digits, operations)
        if p not in exclude and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def heldout(n: int, digits: int = 2, operations: list[str] | None = None) -> list[Problem]:
    """The first `n` (at most HELDOUT_SIZE) held-out problems for this digits/operations setting."""
    operations = sorted(operations or ["+"])
    size = min(HELDOUT_SIZE, _space(digits, operations) // 5)
    if n > size:
        raise LowtuneError(f"eval.n is {n}, but only {size} held-out problems exist for {digits} digit(s) {operations}")
    rng = random.Random(f"{HELDOUT_SEED}-{digits}-{''.join(operations)}")
    return _unique(rng, size, digits, operations, set())[:n]


def train(n: int, digits: int = 2, operations: list[str] | None = None, seed: int = 0) -> list[Problem]:
    """`n` distinct training problems, none of them in the held-out set (fewer if the space is small)."""
    operations = sorted(operations or ["+"])
    exclude = set(heldout(min(HELDOUT_SIZE, _space(digits, operations) // 5), digits, operations))
    return _unique(random.Random(seed), n, digits, operations, exclude)
