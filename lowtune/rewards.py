"""Verifiable rewards for GRPO/RLOO/online DPO/PPO: answer extraction, accuracy, format and length.

A leaf module (imports nothing of lowtune but its error type). Each reward has TRL's reward-function signature:
`reward(completions, **kwargs) -> list[float]`, where `completions` are strings or chat messages
and dataset columns (e.g. `answer`) arrive as keyword lists.

The answer rule (`extract_answer`, which the evaluation uses too; docs/rewards.md has examples).
The first of these that occurs in the text decides, even when it holds no number (the answer is then None):
1. the last `<answer>…</answer>` block: rules 2–4 inside it, else its number as an answer-only span;
2. the last `\\boxed{…}` (nested braces allowed): its number as an answer-only span;
3. the last `####` directly followed by a number (GSM8K's "#### 72"; a heading "#### Step 2" is none):
   that number;
4. the last answer phrase, "answer is" / "answer:" (so also "the final answer is", "**Answer:**"): the
   first number after it, on its line (the next non-blank line when the phrase ends its line);
5. otherwise the whole text: its *last* number.
An answer-only span gives its first number after the last "=" ("x = 12" and "3 boxes of 4 = 12
apples" give 12, "12 apples" 12, "12 = x" 12). In rules 3–4 the number introduced is the first one,
except that an equation starting there gives its result: "The answer is 5, not 6", "Final answer: 7.
(I checked with 3 examples)" and "the answer is 12 + 34 = 46." give 5, 7 and 46.
A number: an optional sign, digits with optional thousands separators ("1,234", LaTeX "1{,}234") and
decimals ("0.5"; "42." is 42), optionally a fraction ("3/4", `\\frac{3}{4}`, `\\dfrac`, `\\tfrac`,
`-\\frac{3}{4}` is -3/4). "$" and "%" are not part of it ("25%" is 25). Digits glued to a word ("x2",
"a_1") are not a number, and "-" right after a letter or digit is a hyphen ("10-12" is 10 and 12).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from lowtune.errors import LowtuneError

_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_NUMBER = re.compile(rf"(?<![\w.])-?{_UNSIGNED}(?:\s*/\s*-?{_UNSIGNED})?")
# An arithmetic run from a number on ("12 + 34 = 46 ", "48/2=24", "3 × (4 + 1) = $15"): it stops at
# words and at punctuation outside numbers, so "5, not 6" and "7. (checked 3 times)" are runs of one number.
_RUN = re.compile(rf"(?:{_NUMBER.pattern}|[ \t]+|[-+*/×÷·^()=$%])*")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_BOXED = re.compile(r"\\boxed\s*\{")
# Markers whose span is the rest of the line after them (an answer phrase may skip to the next line).
_HASHES = re.compile(r"####[ \t*$]*(?=-?\.?\d)")
_PHRASE = re.compile(r"\banswer\b[\s*_]*(?:is\b|:)[\s*_:]*", re.I)
_FRAC = re.compile(r"(-\s*)?\\[dt]?frac\s*(?:\{\s*(-?[\d.,]+)\s*\}|(\d))\s*(?:\{\s*(-?[\d.,]+)\s*\}|(\d))")
_LATEX = [
    (re.compile(r"(?<=\d)(?:\{,\}|\\,)(?=\d{3}(?!\d))"), ","),  # 1{,}234 and 1\,234
    (re.compile(r"\\times(?![a-zA-Z])"), "×"),
    (re.compile(r"\\cdot(?![a-zA-Z])"), "·"),
    (re.compile(r"\\div(?![a-zA-Z])"), "÷"),
    (re.compile(r"\\([$%])"), r"\1"),
]
_THINK_SPAN = re.compile(r"<think>(.*?)</think>", re.S)
_THINK_ANSWER = re.compile(r"^\s*<think>.+?</think>\s*<answer>.+?</answer>\s*$", re.S)


def _normalize(text: str) -> str:
    """Unicode minus to "-", LaTeX fractions to "a/b", LaTeX thousands separators and operators to plain text."""
    text = text.replace("\u2212", "-")
    for pattern, replacement in _LATEX:
        text = pattern.sub(replacement, text)
    return _FRAC.sub(lambda m: f"{'-' if m[1] else ''}{m[2] or m[3]}/{m[4] or m[5]}", text)


def _last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{…}`, braces balanced; None without one.

    One pass with a stack of open braces, so a degenerate reply ("\\boxed{" repeated) costs linear time."""
    boxed = {match.end() for match in _BOXED.finditer(text)}  # where each \\boxed{…}'s content starts
    if not boxed:
        return None
    found, found_start, open_braces = None, -1, []
    for i, char in enumerate(text):
        if char == "{":
            open_braces.append(i + 1)
        elif char == "}" and open_braces:
            start = open_braces.pop()
            if start in boxed and start > found_start:
                found, found_start = text[start:i], start
    return found


def _first_number(span: str) -> str | None:
    """The first number in `span`, or the result when it opens an equation ("12 + 34 = 46" gives 46).

    For a span after a marker: the number the marker introduces."""
    first = _NUMBER.search(span)
    if first is None:
        return None
    run = _RUN.match(span, first.start()).group()
    if "=" in run:
        result = _NUMBER.search(run.rsplit("=", 1)[1])
        if result is not None:
            return result.group()
    return first.group()


def _answer_number(span: str) -> str | None:
    """The number of a span that holds only the answer: the first number after its last "=" ("x = 12",
    "3 boxes of 4 = 12 apples" give 12); before it when nothing follows ("12 = x")."""
    for part in reversed(span.split("=")):
        number = _NUMBER.search(part)
        if number is not None:
            return number.group()
    return None


def _marked(text: str) -> tuple[bool, str | None]:
    """Rules 2–4 (\\boxed, ####, the answer phrase): (whether one occurs, its number)."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return True, _answer_number(boxed)
    for marker in (_HASHES, _PHRASE):
        found = list(marker.finditer(text))
        if found:
            return True, _first_number(text[found[-1].end() :].split("\n", 1)[0])
    return False, None


def extract_answer(text: str) -> str | None:
    """The final answer in `text` as a normalized number string ("1234", "-7", "0.5", "3/4"), or None.

    The rule is stated in the module docstring."""
    text = _normalize(text)
    tags = _ANSWER_TAG.findall(text)
    if tags:
        marked, number = _marked(tags[-1])
        if not marked:
            number = _answer_number(tags[-1])
    else:
        marked, number = _marked(text)
        if not marked:
            numbers = _NUMBER.findall(text)
            number = numbers[-1] if numbers else None
    return None if number is None else re.sub(r"[,\s]", "", number)


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


def think_tokens(tokenizer) -> Callable[..., list[float]]:
    """Not a reward, a measurement: the length in tokens of each completion's `<think>` part (0 without one). GRPO
    logs it at weight 0 when the format reward is on, so metrics.jsonl has the think length of every step
    (`rewards/think_tokens/mean`) and it changes nothing in training."""

    def think_tokens(completions: list, **kwargs) -> list[float]:
        spans = [_THINK_SPAN.search(completion_text(c)) for c in completions]
        return [float(len(tokenizer(m.group(1), add_special_tokens=False)["input_ids"])) if m else 0.0 for m in spans]

    return think_tokens


def weighted_rewards(
    accuracy: float, format: float, length: float, length_max: int
) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """The rule reward functions with non-zero weight, and their weights (both empty when every weight is 0).

    `length_max`: the completion length the length reward's cosine schedule ends at."""

    def length_reward_(completions, answer, completion_ids=None, **kwargs):
        return length_reward(completions, answer, completion_ids, max_length=length_max)

    length_reward_.__name__ = "length_reward"  # as TRL logs it (rewards/length_reward/mean)
    chosen = [(accuracy_reward, accuracy), (format_reward, format), (length_reward_, length)]
    chosen = [(f, w) for f, w in chosen if w != 0]
    return [f for f, _ in chosen], [w for _, w in chosen]


def recipe_rewards(cfg, max_completion_length: int) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """The rule rewards of a recipe's `rewards` section with non-zero weight, and their weights; the length
    reward's schedule ends at `rewards.length_max` or else `max_completion_length`. LowtuneError when every
    weight is 0."""
    length_max = cfg.length_max or max_completion_length
    funcs, weights = weighted_rewards(cfg.accuracy, cfg.format, cfg.length, length_max)
    if not funcs:
        raise LowtuneError("rewards: every weight is 0; give accuracy, format or length a weight")
    return funcs, weights
