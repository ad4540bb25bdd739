"""Verifiable rewards for GRPO/PPO: answer extraction, accuracy, format and length.

A leaf module (imports nothing of lowtune). Each reward has TRL's reward-function signature:
`reward(completions, **kwargs) -> list[float]`, where `completions` are strings or chat messages
and dataset columns (e.g. `answer`) arrive as keyword lists.

`extract_answer` takes, in this order of precedence, the first rule that matches:
1. the last `<answer>…</answer>` block,
2. the last `\\boxed{…}`,
3. the last `#### …` line (GSM8K),
4. the last "the answer is …" / "answer: …",
5. otherwise the whole text.
Within the chosen span the *last number* is the answer: sign, thousands separators ("1,234"),
decimals ("0.5") and simple fractions ("3/4") are understood; a span without a number yields None.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:\s*/\s*-?\d+(?:\.\d+)?)?|-?\.\d+")
_SPANS = [
    re.compile(r"<answer>(.*?)</answer>", re.S | re.I),
    re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}"),
    re.compile(r"####\s*([^\n]*)"),
    re.compile(r"(?:the (?:final )?answer is|answer:)\s*([^\n]*)", re.I),
]
_THINK_ANSWER = re.compile(r"^\s*<think>.+?</think>\s*<answer>.+?</answer>\s*$", re.S)


def extract_answer(text: str) -> str | None:
    """The final answer in `text` as a normalized number string ("1234", "-7", "0.5", "3/4"), or None."""
    span = text
    for pattern in _SPANS:
        found = pattern.findall(text)
        if found:
            span = found[-1]
            break
    numbers = _NUMBER.findall(span)
    if not numbers:
        return None
    return re.sub(r"[,\s]", "", numbers[-1])


def to_number(answer: str | int | float | None) -> Fraction | None:
    """Parse an extracted answer or a reference ("1,234", "-7", "3/4", "0.5", 42) exactly."""
    if answer is None:
        return None
    if isinstance(answer, (int, float)):
        return Fraction(answer).limit_denominator(10**9)
    text = re.sub(r"[,\s$%]", "", str(answer))
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return Fraction(Fraction(num), Fraction(den))
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def completion_text(completion: Any) -> str:
    """A completion as text: strings pass through; chat messages give their concatenated content."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion)


def accuracy_reward(completions: list, answer: list, **kwargs) -> list[float]:
    """1.0 when the extracted answer equals the reference numerically, else 0.0."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        got = to_number(extract_answer(completion_text(completion)))
        want = to_number(extract_answer(str(reference)) if isinstance(reference, str) else reference)
        rewards.append(1.0 if got is not None and got == want else 0.0)
    return rewards


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when the completion is exactly `<think>…</think>` followed by `<answer>…</answer>`."""
    return [1.0 if _THINK_ANSWER.match(completion_text(c)) else 0.0 for c in completions]


def cosine_length_scale(length: int, max_length: int, short: float, long: float) -> float:
    """Cosine interpolation from `short` at length 0 to `long` at `max_length` (Yeo et al. 2025, eq. 1)."""
    t = min(max(length, 0), max_length)
    return long + 0.5 * (short - long) * (1.0 + math.cos(t * math.pi / max_length))


def length_reward(
    completions: list,
    answer: list,
    completion_ids: list | None = None,
    max_length: int = 256,
    correct_short: float = 2.0,
    correct_long: float = 1.0,
    wrong_short: float = -10.0,
    wrong_long: float = 0.0,
    exceed: float = -10.0,
    **kwargs,
) -> list[float]:
    """Cosine length-scaled correctness reward (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning").

    A correct answer earns `correct_short` when short, falling to `correct_long` at `max_length`; a
    wrong one earns `wrong_short` when short, rising to `wrong_long` at `max_length`: the model is
    pushed to be brief when right and to think longer when wrong. At or beyond `max_length`:
    `exceed` — with `max_length` equal to the generation budget, a completion that reaches it was
    cut off; scoring it as the "long wrong" 0 instead lets the policy hack the reward by rambling
    until the cut (measured: every completion truncated within 9 GRPO steps).
    Defaults are the paper's (r0c=2, rLc=1, r0w=-10, rLw=0, re=-10). Length counts tokens when TRL
    passes `completion_ids`, else whitespace-separated words.
    """
    correct = accuracy_reward(completions, answer)
    rewards = []
    for i, (completion, ok) in enumerate(zip(completions, correct, strict=True)):
        length = len(completion_ids[i]) if completion_ids is not None else len(completion_text(completion).split())
        if length >= max_length:  # reaching the limit means the completion was cut off
            rewards.append(exceed)
        elif ok:
            rewards.append(cosine_length_scale(length, max_length, correct_short, correct_long))
        else:
            rewards.append(cosine_length_scale(length, max_length, wrong_short, wrong_long))
    return rewards
