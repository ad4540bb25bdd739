"""The builtin multi-step arithmetic task, with worked traces: "What is 23 + 14 × 3 − 8?".

A problem has `steps` operations (2 to 4, so 3 to 5 operands) drawn from +, − and ×, with the usual precedence
(× before + and −, left to right) and parentheses where the problem needs them ("(23 + 14) × 3 − 8"). Its
trace works it out one operation per step, in the order a person would (parentheses first, then ×, then + and
− left to right): "14 × 3 = 42. 23 + 42 = 65. 65 − 8 = 57.". Every intermediate result is a whole number of
at least 0. Difficulty: `steps`, and `digits` of the numbers added and subtracted; a factor of × is one digit
(2 to 9), so the numbers stay the size a person works with.

Deterministic by seed. The held-out set depends only on (digits, steps) and is drawn first; training problems
are drawn from the rest, so the two never overlap whatever the training seed (as `lowtune.data.arithmetic`).
Training problems may mix difficulties: `steps` a list draws each level's share from its own space and takes the
levels in turn ([3, 4]: a 4-operand problem, a 5-operand one, ...).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from lowtune.errors import LowtuneError

OPERATIONS = ("+", "−", "×")
PRECEDENCE = {"+": 1, "−": 1, "×": 2}
HELDOUT_SEED = 20260303
HELDOUT_SIZE = 500
# Draws in a row that find no new problem before the space counts as used up (the spaces of 3 or more operands
# are far larger than any training set; this only ends a request for more problems than exist).
MAX_MISSES = 20_000

# An expression tree: a number, or (operator, left, right).
Node = int | tuple[str, "Node", "Node"]


def _value(node: Node) -> int:
    if isinstance(node, int):
        return node
    op, left, right = node
    a, b = _value(left), _value(right)
    return a + b if op == "+" else a - b if op == "−" else a * b


def _text(node: Node) -> str:
    """The expression with the fewest parentheses that keep its tree: a lower-precedence left operand, and a
    right operand of lower or equal precedence ("23 − (14 + 3)"), is put in parentheses."""
    if isinstance(node, int):
        return str(node)
    op, left, right = node
    a, b = _text(left), _text(right)
    if not isinstance(left, int) and PRECEDENCE[left[0]] < PRECEDENCE[op]:
        a = f"({a})"
    if not isinstance(right, int) and PRECEDENCE[right[0]] <= PRECEDENCE[op]:
        b = f"({b})"
    return f"{a} {op} {b}"


def _steps(node: Node, out: list[str]) -> int:
    """Append the steps that work `node` out (its left operand first, then its right, then itself); its value."""
    if isinstance(node, int):
        return node
    op, left, right = node
    a, b = _steps(left, out), _steps(right, out)
    result = _value((op, a, b))
    out.append(f"{a} {op} {b} = {result}.")
    return result


@dataclass(frozen=True)
class Problem:
    tree: Node

    @property
    def expression(self) -> str:
        return _text(self.tree)

    @property
    def answer(self) -> int:
        return _value(self.tree)

    @property
    def question(self) -> str:
        return f"What is {self.expression}?"

    @property
    def steps(self) -> list[str]:
        """One operation each, in order: ["14 × 3 = 42.", "23 + 42 = 65.", "65 − 8 = 57."]."""
        out: list[str] = []
        _steps(self.tree, out)
        return out

    @property
    def trace(self) -> str:
        return " ".join(self.steps)

    @property
    def solution(self) -> str:
        """The worked reply, for cold-start SFT: `<think>` the trace `</think><answer>` the answer `</answer>`."""
        return f"<think>{self.trace}</think><answer>{self.answer}</answer>"


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _draw_tree(rng: random.Random, operands: int, digits: int) -> Node:
    if operands == 1:
        return _number(rng, digits)
    op = rng.choice(OPERATIONS)
    if op == "×":  # one side a one-digit factor, either side
        factor, other = rng.randint(2, 9), _draw_tree(rng, operands - 1, digits)
        return (op, factor, other) if rng.random() < 0.5 else (op, other, factor)
    left = rng.randint(1, operands - 1)
    return (op, _draw_tree(rng, left, digits), _draw_tree(rng, operands - left, digits))


def _never_negative(node: Node) -> bool:
    if isinstance(node, int):
        return True
    return _never_negative(node[1]) and _never_negative(node[2]) and _value(node) >= 0


def _unique(rng: random.Random, n: int, digits: int, steps: int, exclude: set[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out, misses = [], 0
    while len(out) < n and misses < MAX_MISSES:
        tree = _draw_tree(rng, steps + 1, digits)
        p = Problem(tree)
        if not _never_negative(tree) or p in exclude or p in seen:
            misses += 1
            continue
        seen.add(p)
        out.append(p)
        misses = 0
    return out


def _check(digits: int, steps: int) -> None:
    if not 2 <= steps <= 4:
        raise LowtuneError(f"multistep problems take 2 to 4 steps (3 to 5 operands), got {steps}")
    if not 1 <= digits <= 6:
        raise LowtuneError(f"multistep problems have numbers of 1 to 6 digits, got {digits}")


def heldout(n: int, digits: int = 2, steps: int = 3) -> list[Problem]:
    """The first `n` (at most HELDOUT_SIZE) held-out problems for this difficulty."""
    _check(digits, steps)
    if n > HELDOUT_SIZE:
        raise LowtuneError(f"eval.n is {n}, but the multistep task holds out {HELDOUT_SIZE} problems")
    return _unique(random.Random(f"{HELDOUT_SEED}-{digits}-{steps}"), HELDOUT_SIZE, digits, steps, set())[:n]


def train(n: int, digits: int = 2, steps: int | list[int] = 3, seed: int = 0) -> list[Problem]:
    """`n` distinct training problems, none of them in the held-out set of their level.

    `steps` a list mixes levels (each listed once: `DataConfig.check` sees to it): the first `n % len(steps)` levels
    get one problem more, and the problems come a level at a time in the listed order, round after round.
    """
    if isinstance(steps, list):
        k = len(steps)
        per_level = [train(n // k + (i < n % k), digits, s, seed) for i, s in enumerate(steps)]
        return [p for round_ in itertools.zip_longest(*per_level) for p in round_ if p is not None]
    exclude = set(heldout(HELDOUT_SIZE, digits, steps))
    return _unique(random.Random(seed), n, digits, steps, exclude)
