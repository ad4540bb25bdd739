import json
import time
from fractions import Fraction
from pathlib import Path

import pytest

from lowtune.rewards import (
    accuracy_reward,
    cosine_length_scale,
    extract_answer,
    format_reward,
    length_reward,
    think_tokens,
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
        ("\\boxed{\\frac{3}{4}} hmm", "3/4"),  # a LaTeX fraction is one number
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


# Replies as models and data sets write them, with the answer a reader would take.
GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)
R1_REPLY = (
    "<think>\nShe has 3 boxes of 4 eggs: 3 * 4 = 12. At first I thought the answer is 13,\n"
    "but 12 / 4 = 3 boxes checks out.\n</think>\n<answer>12</answer>"
)
# A base model goes on after its "#### n" line with a new problem of its own.
GSM8K_CONTINUED = GSM8K_SOLUTION + "\n\nQuestion: Weng earns $12 an hour. How much did she earn for 50 minutes?"


@pytest.mark.parametrize(
    "text, expected",
    [
        # GSM8K: the "#### n" line, whatever the reasoning and its <<...>> calculator annotations hold
        (GSM8K_SOLUTION, "72"),
        ("She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18 a day.\n#### 18", "18"),
        (GSM8K_CONTINUED, "72"),
        ("#### 1,234", "1234"),
        ("#### -5 degrees, 5 below zero", "-5"),
        ("#### Step 2: add the 3 boxes\nSo the total is 9.", "9"),  # a markdown heading, not a GSM8K answer line
        # R1 style: the <answer> tag, not the numbers of the think block
        (R1_REPLY, "12"),
        ("<think>7 or 8? \\boxed{8} at first.</think>\n<answer>7</answer>", "7"),
        ("<think>2 + 2</think><answer>The answer is 4, not 5.</answer>", "4"),
        ("<think>I guess the answer is 7. No, 3 + 5.</think>\nThe answer is 8", "8"),  # no tag: the last phrase
        ("<answer>After 3 steps, the answer is 7</answer>", "7"),
        ("<answer>x = 12</answer>", "12"),
        ("<answer>12 apples</answer>", "12"),
        ("<answer>3 boxes of 4 = 12 apples</answer>", "12"),
        ("<answer>12 (3 boxes of 4)</answer>", "12"),
        ("<think>3 boxes</think><answer>I don't know</answer>", None),
        # answer phrases: the number the phrase introduces, not the line's last
        ("The answer is 5, not 6.", "5"),
        ("Final answer: 7. (I checked with 3 examples)", "7"),
        ("**Answer:** 42 (6 boxes of 7)", "42"),
        ("**Final Answer**: 42 (from 6 * 7)", "42"),
        ("answer is 0.5 (1/2 of the 2 cups)", "0.5"),
        ("Therefore, the answer is 12 apples, 3 in each of 4 bags.", "12"),
        ("First 3 + 4 = 7 per box, 2 boxes. The answer is 7 * 2 = 14 apples.", "14"),
        ("So the answer is: x = 12, the 3 bags of 4.", "12"),
        ("I thought the answer is 5. Rechecking 2 + 4 = 6... the answer is 6", "6"),
        ("The answer is:\n\n$42$", "42"),
        ("The answer isn't 6, it's 5", "5"),  # "isn't" is no answer phrase: the last number
        # \boxed: LaTeX fractions, signs, separators, equations
        ("The final answer is $\\boxed{-\\frac{3}{4}}$", "-3/4"),
        ("\\boxed{\\dfrac{5}{2}}", "5/2"),
        ("\\boxed{\\tfrac{1}{3}}", "1/3"),
        ("\\boxed{- \\frac{1}{2}}", "-1/2"),
        ("\\boxed{\\frac{-3}{4}}", "-3/4"),
        ("\\boxed{\\frac12}", "1/2"),
        ("$\\frac{3}{4}$ of the cake", "3/4"),
        ("\\boxed{1,234}", "1234"),
        ("\\boxed{1{,}234}", "1234"),
        ("\\boxed{x = 5}", "5"),
        ("\\boxed{3 \\times 4 = 12}", "12"),
        ("\\boxed{25\\%}", "25"),
        ("\\boxed{12 \\text{ apples}}", "12"),
        ("\\boxed{\\text{total} = 42}", "42"),
        ("The answer is 4 per box, so in total \\boxed{12}.", "12"),  # \boxed outranks the phrase
        ("First \\boxed{3}, then corrected: \\boxed{\\frac{7}{2}}", "7/2"),
        ("\\boxed{\\text{no solution}} although 3 was close", None),
        # free text: the last number
        ("She pays $18.", "18"),
        ("The price rose by 25%.", "25"),
        ("That leaves 1,234,567 grains", "1234567"),
        ("The temperature is -3 degrees", "-3"),
        ("It is \u22123 degrees", "-3"),  # Unicode minus
        ("12 - 34 = -22", "-22"),
        ("Children aged 10-12", "12"),  # a hyphen, not a minus sign
        ("x_1 = 12 and x2", "12"),  # digits glued to a word are no number
        ("42.", "42"),
        ("The total is 3.75.", "3.75"),
        ("I cannot solve this.", None),
        ("<think>hmm</think>", None),
    ],
)
def test_extract_answer_from_model_phrasings(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_is_linear_on_a_degenerate_reply():
    # A policy early in RL may repeat one token until the length limit; a reward must not stall on it.
    start = time.perf_counter()
    assert extract_answer("\\boxed{" * 3000) is None
    assert extract_answer("\\boxed{" * 3000 + "5}") == "5"
    assert time.perf_counter() - start < 1.0  # linear: milliseconds; a rescan per \boxed: seconds


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


def test_accuracy_reward_reads_the_answer_a_reader_would():
    completions = [
        "The answer is 5, not 6.",
        "Final answer: 7. (I checked with 3 examples)",
        "The final answer is $\\boxed{-\\frac{3}{4}}$",
        "<think>48/2 = 24, 48 + 24 = 72</think><answer>72 clips</answer>",
    ]
    answers = ["5", 7, "-0.75", "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72"]
    assert accuracy_reward(completions, answer=answers) == [1.0] * 4


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


def test_think_tokens_measures_the_think_part_in_tokens():
    class Words:  # a tokenizer of one token per word
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    measure = think_tokens(Words())
    replies = [
        "<think>14 × 3 = 42.</think><answer>42</answer>",
        "42",
        [{"role": "assistant", "content": "<think>a b</think>"}],
    ]
    assert measure.__name__ == "think_tokens"  # TRL logs it as rewards/think_tokens/mean
    assert measure(replies, answer=["42"] * 3) == [5.0, 0.0, 2.0]


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
