import json
from fractions import Fraction
from pathlib import Path

import pytest

from lowtune.rewards import (
    accuracy_reward,
    cosine_length_scale,
    extract_answer,
    format_reward,
    length_reward,
    to_number,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>12 + 30 = 42, maybe 41?</think><answer>42</answer>", "42"),
        ("<think>the answer is 7</think><answer>9</answer>", "9"),  # the tag wins over the think block
        ("<answer>first 3</answer> then <answer>final 5</answer>", "5"),
        ("so we get \\boxed{1,234} in total, not 99", "1234"),
        ("\\boxed{\\frac{3}{4}} hmm", "4"),  # LaTeX fractions are not parsed: last number inside
        ("Janet makes 9 * 2 = $18.\n#### 18", "18"),
        ("First 10, then 20. The answer is -7.", "-7"),
        ("Answer: 3/4 of the cake", "3/4"),
        ("It costs 0.5 dollars, or 50 cents", "50"),
        ("1,2,3", "3"),
        ("There are 2 numbers: 12 and 1,000,000", "1000000"),
        ("no number at all", None),
        ("<answer>unknown</answer> but 5 elsewhere", None),  # an answer tag without a number is no answer
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1,234", Fraction(1234)),
        ("-7", Fraction(-7)),
        ("3/4", Fraction(3, 4)),
        ("0.5", Fraction(1, 2)),
        (42, Fraction(42)),
        ("$1,000", Fraction(1000)),
        ("abc", None),
        ("1/0", None),
        (None, None),
    ],
)
def test_to_number(value, expected):
    assert to_number(value) == expected


def test_accuracy_reward_compares_numbers_not_strings():
    completions = ["<answer>0.75</answer>", "<answer>3/4</answer>", "It is 1,234.", "12", "no idea"]
    answers = ["3/4", "0.75", 1234, "#### 13", "5"]
    assert accuracy_reward(completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_rewards_accept_chat_messages():
    completions = [[{"role": "assistant", "content": "<think>2+2</think><answer>4</answer>"}]]
    assert accuracy_reward(completions, answer=["4"]) == [1.0]
    assert format_reward(completions) == [1.0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>add them</think><answer>4</answer>", 1.0),
        ("  <think>a\nb</think>\n<answer>4</answer>\n", 1.0),
        ("<answer>4</answer>", 0.0),
        ("<think>x</think><answer>4</answer> extra words", 0.0),
        ("<think></think><answer>4</answer>", 0.0),
        ("4", 0.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward([text]) == [expected]


def test_cosine_length_scale_endpoints_and_midpoint():
    assert cosine_length_scale(0, 100, 2.0, 1.0) == pytest.approx(2.0)
    assert cosine_length_scale(100, 100, 2.0, 1.0) == pytest.approx(1.0)
    assert cosine_length_scale(50, 100, 2.0, 1.0) == pytest.approx(1.5)
    assert cosine_length_scale(50, 100, -10.0, 0.0) == pytest.approx(-5.0)


def test_length_reward_prefers_short_right_and_long_wrong():
    ids = lambda n: [0] * n  # noqa: E731
    rewards = length_reward(
        ["<answer>4</answer>", "<answer>4</answer>", "<answer>5</answer>", "<answer>5</answer>", "<answer>4</answer>"],
        answer=["4"] * 5,
        completion_ids=[ids(10), ids(200), ids(10), ids(200), ids(300)],
        max_length=256,
    )
    short_right, long_right, short_wrong, long_wrong, too_long = rewards
    assert short_right > long_right >= 1.0
    assert short_wrong < long_wrong <= 0.0
    assert too_long == -10.0
    # Reaching the limit is being cut off: it must not earn the "long but wrong" 0.
    assert length_reward(["<answer>5</answer>"], answer=["4"], completion_ids=[ids(256)], max_length=256) == [-10.0]


def test_gsm8k_reference_answers_all_parse():
    path = SHARED / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is not present (shared data sets live beside the repository)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(rows) == 1319
    for row in rows:
        value = to_number(extract_answer(row["answer"]))
        assert value is not None, row["answer"][-40:]
        # The "#### n" line is what counts, even though the reasoning holds many other numbers.
        assert value == to_number(row["answer"].rsplit("####", 1)[1].strip())
    assert accuracy_reward([r["answer"] for r in rows], answer=[r["answer"] for r in rows]) == [1.0] * len(rows)
