"""The builtin verifiable task: integer arithmetic with configurable difficulty.

Difficulty: digits per operand, number of operands (2-4), and operations (+, -, *; usual
precedence, * before + and -). Deterministic by seed. The held-out set depends only on
(digits, operations, operands) and is drawn first; training problems are drawn from the rest, so
the two never overlap whatever the training seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lowtune.errors import LowtuneError

OPERATIONS = ("+", "-", "*")
HELDOUT_SEED = 20260101
HELDOUT_SIZE = 500


@dataclass(frozen=True)
class Problem:
    terms: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def expression(self) -> str:
        parts = [str(self.terms[0])]
        for op, term in zip(self.ops, self.terms[1:], strict=True):
            parts += [op, str(term)]
        return " ".join(parts)

    @property
    def answer(self) -> int:
        # Products first, then a left-to-right sum of signed products.
        total, product, sign = 0, self.terms[0], 1
        for op, term in zip(self.ops, self.terms[1:], strict=True):
            if op == "*":
                product *= term
            else:
                total += sign * product
                product, sign = term, (1 if op == "+" else -1)
        return total + sign * product

    @property
    def question(self) -> str:
        return f"What is {self.expression}?"

    @property
    def solution(self) -> str:
        return f"{self.expression} = {self.answer}"


def _space(digits: int, operations: list[str], operands: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return (10**digits - low) ** operands * len(operations) ** (operands - 1)


def _draw(rng: random.Random, digits: int, operations: list[str], operands: int) -> Problem:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    high = 10**digits - 1
    terms, ops = [rng.randint(low, high)], []
    for _ in range(operands - 1):
        ops.append(rng.choice(operations))
        terms.append(rng.randint(low, high))
    return Problem(tuple(terms), tuple(ops))


def _unique(
    rng: random.Random, n: int, digits: int, operations: list[str], operands: int, exclude: set[Problem]
) -> list[Problem]:
    n = min(n, _space(digits, operations, operands) - len(exclude))
    seen: set[Problem] = set()
    out = []
    while len(out) < n:
        p = _draw(rng, digits, operations, operands)
        if p not in exclude and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _heldout_size(digits: int, operations: list[str], operands: int) -> int:
    return min(HELDOUT_SIZE, _space(digits, operations, operands) // 5)


def heldout(n: int, digits: int = 2, operations: list[str] | None = None, operands: int = 2) -> list[Problem]:
    """The first `n` (at most HELDOUT_SIZE) held-out problems for this difficulty."""
    operations = sorted(operations or ["+"])
    size = _heldout_size(digits, operations, operands)
    if n > size:
        raise LowtuneError(f"eval.n is {n}, but only {size} held-out problems exist for {digits} digit(s) {operations}")
    key = f"{HELDOUT_SEED}-{digits}-{''.join(operations)}" + (f"-{operands}" if operands != 2 else "")
    return _unique(random.Random(key), size, digits, operations, operands, set())[:n]


def train(
    n: int, digits: int = 2, operations: list[str] | None = None, seed: int = 0, operands: int = 2
) -> list[Problem]:
    """`n` distinct training problems, none of them in the held-out set (fewer if the space is small)."""
    operations = sorted(operations or ["+"])
    exclude = set(heldout(_heldout_size(digits, operations, operands), digits, operations, operands))
    return _unique(random.Random(seed), n, digits, operations, operands, exclude)


def wrong_answer(problem: Problem, rng: random.Random) -> int:
    """A plausible wrong answer to `problem`, the rejected reply of a synthetic preference pair.

    Drawn from the mistakes people make: a dropped or extra carry (off by a power of ten), two
    adjacent digits swapped, off by one, or a + read as - or the reverse. Never the answer.
    """
    answer = problem.answer
    candidates = {answer + 10**k * s for k in range(1, max(len(str(abs(answer))), 2)) for s in (-1, 1)}
    candidates |= {answer - 1, answer + 1}
    digits = str(abs(answer))
    for i in range(len(digits) - 1):
        if digits[i] != digits[i + 1] and not (i == 0 and digits[i + 1] == "0"):
            swapped = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
            candidates.add(int(swapped) * (-1 if answer < 0 else 1))
    for i, op in enumerate(problem.ops):
        if op in "+-":
            ops = problem.ops[:i] + ("-" if op == "+" else "+",) + problem.ops[i + 1 :]
            candidates.add(Problem(problem.terms, ops).answer)
    candidates.discard(answer)
    if answer >= 0:  # a negative result for a problem with a positive answer is not plausible
        candidates = {c for c in candidates if c >= 0}
    return rng.choice(sorted(candidates))


def preference_pair(problem: Problem, rng: random.Random) -> dict:
    """{"prompt", "chosen", "rejected"} messages: the correct worked answer against a plausible wrong one."""
    wrong = wrong_answer(problem, rng)
    return {
        "prompt": [{"role": "user", "content": problem.question}],
        "chosen": [{"role": "assistant", "content": problem.solution}],
        "rejected": [{"role": "assistant", "content": f"{problem.expression} = {wrong}"}],
    }
