"""The builtin multi-step arithmetic task: exact worked traces, held-out problems never trained on, the difficulty
knob, and its rows for SFT, GRPO and held-out evaluation."""

import dataclasses
import re

import pytest

from lowtune import data, evaluate
from lowtune.config import DataConfig, load_recipe
from lowtune.data import multistep
from lowtune.data.rows import read_rows
from lowtune.errors import LowtuneError
from lowtune.rewards import extract_answer, format_reward, to_number

STEP = re.compile(r"^(\d+) ([+−×]) (\d+) = (\d+)\.$")


def python_value(expression: str) -> int:
    """Python's own evaluation of a problem's expression (its precedence and parentheses)."""
    assert re.fullmatch(r"[\d +−×()]+", expression), expression
    return eval(expression.replace("×", "*").replace("−", "-"))  # noqa: S307 - digits, operators, parentheses only


@pytest.mark.parametrize(("digits", "steps"), [(1, 2), (2, 3), (3, 4), (2, 4)])
def test_every_step_of_every_trace_is_exact_and_the_trace_reads_back_as_the_answer(digits, steps):
    problems = multistep.train(200, digits=digits, steps=steps, seed=3) + multistep.heldout(50, digits, steps)
    for p in problems:
        assert p.answer == python_value(p.expression) >= 0
        assert len(p.steps) == steps
        literals = [int(n) for n in re.findall(r"\d+", p.expression)]
        results = []
        for step in p.steps:  # one operation each, on numbers of the problem or results of earlier steps
            a, op, b, c = STEP.match(step).groups()
            assert int(c) == python_value(f"{a} {op} {b}") >= 0, step
            for operand in (int(a), int(b)):
                source = results if operand in results else literals
                source.remove(operand)
            results.append(int(c))
        assert not literals and results == [p.answer]  # every number used once; the last step gives the answer
        assert p.trace == " ".join(p.steps)
        assert p.solution == f"<think>{p.trace}</think><answer>{p.answer}</answer>"
        assert to_number(extract_answer(p.solution)) == p.answer == to_number(extract_answer(p.trace))
        assert format_reward([p.solution]) == [1.0]


def test_a_worked_example_follows_precedence_and_parentheses():
    p = multistep.Problem(("−", ("+", 23, ("×", 14, 3)), 8))
    assert p.question == "What is 23 + 14 × 3 − 8?" and p.answer == 57
    assert p.trace == "14 × 3 = 42. 23 + 42 = 65. 65 − 8 = 57."
    p = multistep.Problem(("−", ("×", ("+", 23, 14), 3), 8))
    assert p.expression == "(23 + 14) × 3 − 8" and p.trace == "23 + 14 = 37. 37 × 3 = 111. 111 − 8 = 103."
    p = multistep.Problem(("−", 90, ("+", 14, ("×", 3, 8))))
    assert p.expression == "90 − (14 + 3 × 8)" and p.answer == 52 == python_value(p.expression)
    assert p.trace == "3 × 8 = 24. 14 + 24 = 38. 90 − 38 = 52."
    drawn = multistep.train(500, digits=2, steps=3)
    assert any("(" in p.expression for p in drawn) and any("×" in p.expression for p in drawn)


@pytest.mark.parametrize(("digits", "steps"), [(1, 2), (2, 3), (2, 4)])
def test_heldout_problems_never_appear_in_training_for_any_seed_or_size(digits, steps):
    heldout = multistep.heldout(500, digits, steps)
    assert len(set(heldout)) == 500 and len({p.expression for p in heldout}) == 500
    assert multistep.heldout(40, digits, steps) == heldout[:40]  # a prefix: eval.n picks the first n
    texts = {p.question for p in heldout}
    for seed in range(4):
        for n in (10, 300, 2500):
            train = multistep.train(n, digits, steps, seed)
            assert len(train) == n and len({p.expression for p in train}) == n
            assert not set(train) & set(heldout) and not {p.question for p in train} & texts
    assert multistep.train(50, digits, steps, seed=1) == multistep.train(50, digits, steps, seed=1)
    assert multistep.train(50, digits, steps, seed=1) != multistep.train(50, digits, steps, seed=2)


def test_a_small_space_gives_every_problem_it_has_and_then_stops():
    problems = multistep.train(100_000, digits=1, steps=2)
    assert 5_000 < len(problems) < 100_000 and len(set(problems)) == len(problems)


def test_the_difficulty_knob_sets_the_operand_count_and_digits():
    for steps in (2, 3, 4):
        for p in multistep.train(100, digits=2, steps=steps):
            assert len(re.findall(r"\d+", p.expression)) == steps + 1 == len(p.steps) + 1
    three = multistep.train(300, digits=3, steps=2)
    assert all(int(n) < 1000 for p in three for n in re.findall(r"\d+", p.expression))
    assert any(int(n) >= 100 for p in three for n in re.findall(r"\d+", p.expression))
    with pytest.raises(LowtuneError, match="2 to 4 steps"):
        multistep.train(5, steps=5)
    with pytest.raises(LowtuneError, match="holds out 500"):
        multistep.heldout(501)


def test_a_list_of_steps_mixes_the_levels_in_turn_each_kept_from_its_heldout_set():
    mix = multistep.train(301, digits=1, steps=[3, 4], seed=5)
    levels = [len(p.steps) for p in mix]
    assert levels == [3, 4] * 150 + [3]  # in turn; the first level takes the odd one
    assert [p for p in mix if len(p.steps) == 4] == multistep.train(150, 1, 4, seed=5)  # each level as drawn alone
    for steps in (3, 4):
        assert not {p for p in mix if len(p.steps) == steps} & set(multistep.heldout(500, 1, steps))
    rows = [row for _, row in read_rows(DataConfig(source="multistep", n_train=4, steps=[4, 2], digits=1))]
    assert [len(re.findall(r"\d+", r["messages"][0]["content"])) for r in rows] == [5, 3, 5, 3]
    with pytest.raises(LowtuneError, match="data.steps lists each level once"):
        load_recipe(None, ["data.source=multistep", "data.steps=3,3"])
    with pytest.raises(LowtuneError, match=r"data.steps must be 2..4, got \[3, 5\]"):
        load_recipe(None, ["data.source=multistep", "data.steps=3,5"])


def test_multistep_rows_for_sft_and_grpo():
    cfg = DataConfig(source="multistep", n_train=6, steps=2, digits=2, seed=4)
    problems = multistep.train(6, digits=2, steps=2, seed=4)
    sft = data.load(cfg, kind="sft")
    assert [r["prompt"] for r in sft] == [[{"role": "user", "content": p.question}] for p in problems]
    assert [r["completion"] for r in sft] == [[{"role": "assistant", "content": p.solution}] for p in problems]
    prompts = data.load(cfg, kind="prompt", system_prompt="Think first.")
    assert prompts[0]["prompt"] == [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": problems[0].question},
    ]
    assert list(prompts["answer"]) == [str(p.answer) for p in problems]
    # the direct-answer baseline: the same problems, the answer alone
    direct = data.load(dataclasses.replace(cfg, traces=False), kind="sft")
    assert [r["prompt"] for r in direct] == [r["prompt"] for r in sft]
    assert [r["completion"] for r in direct] == [
        [{"role": "assistant", "content": f"<answer>{p.answer}</answer>"}] for p in problems
    ]


def _words(text, add_special_tokens=False):
    """Enough of a tokenizer for `evaluate.accuracy` when generation is replaced: a token per word."""
    return {"input_ids": text.split()}


class _Model:
    """Enough of a model for `evaluate.accuracy` when generation is replaced."""

    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def test_eval_task_multistep_scores_the_heldout_problems_of_data_steps(monkeypatch):
    recipe = load_recipe(None, ["data.source=multistep", "data.steps=4", "eval.task=multistep", "eval.n=5"])
    problems = evaluate.heldout_problems("multistep", 5, digits=2, steps=4)
    assert problems == multistep.heldout(5, 2, 4)
    answers = {p.question: p.solution for p in problems}
    seen = []

    def worked(model, tokenizer, questions, *args, **kwargs):
        seen.extend(questions)
        return [answers.get(q) or str(python_value(q.removeprefix("What is ").rstrip("?"))) for q in questions]

    monkeypatch.setattr(evaluate, "generate", worked)
    result = evaluate.heldout_accuracy(_Model(), _words, recipe)
    assert seen == [p.question for p in problems]
    assert result.task == "multistep" and result.n == 5 and result.accuracy == 1.0
    assert result.mean_reply_tokens == sum(len(p.solution.split()) for p in problems) / 5  # the traces' words
    eval_steps = load_recipe(None, ["data.source=multistep", "eval.task=multistep", "eval.steps=2", "eval.n=3"])
    assert evaluate.heldout_accuracy(_Model(), _words, eval_steps).accuracy == 1.0
    assert seen[5:] == [p.question for p in multistep.heldout(3, 2, 2)]
    mixed = load_recipe(None, ["data.source=multistep", "data.steps=[4, 2]", "eval.task=multistep", "eval.n=3"])
    assert evaluate.heldout_accuracy(_Model(), _words, mixed).accuracy == 1.0
    assert seen[8:] == [p.question for p in multistep.heldout(3, 2, 4)]  # a mix is scored on its first level


def test_recipes_explain_shows_the_multistep_and_gsm8k_fields(capsys):
    from lowtune.cli import main

    assert main(["recipes", "--explain", "grpo"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for field in ("data.steps", "eval.steps", "eval.data", "multistep", "gsm8k"):
        assert field in out, field
    with pytest.raises(LowtuneError, match="data.steps must be 2..4, got 5"):
        load_recipe(None, ["data.source=multistep", "data.steps=5"])
