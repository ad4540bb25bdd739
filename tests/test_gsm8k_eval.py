"""GSM8K evaluation: `eval.task: gsm8k` with `eval.data`, and `lowtune eval MODEL --task gsm8k --data FILE`, on
GSM8K's test split (../shared/data, never copied into the repository) with tiny-random and a handful of rows."""

import json
from pathlib import Path

import pytest

from lowtune import evaluate, models
from lowtune.cli import main
from lowtune.config import load_recipe
from lowtune.data import gsm8k
from lowtune.errors import LowtuneError

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.fixture
def test_split():
    if not GSM8K.is_file():
        pytest.skip(f"{GSM8K} is not present (shared data sets live beside the repository)")
    return GSM8K


def first_rows(path, n):
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


def test_eval_task_gsm8k_scores_the_first_rows_with_their_references(test_split, tiny_path):
    rows = first_rows(test_split, 3)
    problems = gsm8k.problems(test_split, 3)
    assert [p.question for p in problems] == [r["question"] for r in rows]
    assert [p.answer for p in problems] == [int(r["answer"].rsplit("####", 1)[1].replace(",", "")) for r in rows]
    assert [p.where for p in problems] == [f"{test_split}:{i}" for i in (1, 2, 3)]

    recipe = load_recipe(None, ["model.name=tiny-random", "eval.task=gsm8k", f"eval.data={test_split}", "eval.n=3",
                                "eval.max_new_tokens=4"])  # fmt: skip
    model, tokenizer = models.load(recipe.model)
    scored = evaluate.accuracy(model, tokenizer, problems, max_new_tokens=4)
    assert scored.n == 3 and 0.0 <= scored.accuracy <= 1.0
    assert [(q, ref) for q, _, ref in scored.examples] == [(p.question, p.answer) for p in problems]
    assert all(isinstance(reply, str) for _, reply, _ in scored.examples)  # each reply recorded
    held = evaluate.heldout_accuracy(model, tokenizer, recipe)
    assert held.task == "gsm8k" and held.n == 3 and held.example == scored.examples[0][1]


def test_lowtune_eval_task_gsm8k(test_split, tiny_path, capsys):
    argv = ["eval", "tiny-random", "--task", "gsm8k", "--data", str(test_split), "--n", "2", "--max-new-tokens", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"the first 2 rows of {test_split}" in out and "accuracy" in out
    assert "18" in out  # the first row's reference, from its "#### 18"


def test_a_missing_or_bad_file_is_one_line_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    rows = [{"question": "q", "answer": "2 + 2 = 4\n#### 4"}, {"question": "q2", "answer": "4"}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LowtuneError, match=rf"^{bad}:2: field 'answer' has no final '#### <number>' line$"):
        gsm8k.problems(bad, 5)
    assert [p.answer for p in gsm8k.problems(bad, 1)] == [4]  # only the rows scored are read
    bad.write_text('{"question": "q", "answer": "#### 4"}\n{"question": "q",\n')
    with pytest.raises(LowtuneError, match=rf"^{bad}:2: not valid JSON"):
        gsm8k.problems(bad, 5)
    bad.write_text('{"question": "q", "answer": "#### four"}\n')
    with pytest.raises(LowtuneError, match=rf"^{bad}:1: field 'answer': '#### four' is not a number$"):
        gsm8k.problems(bad, 5)

    missing = tmp_path / "missing.jsonl"
    assert main(["eval", "tiny-random", "--task", "gsm8k", "--data", str(missing)]) == 2
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and out.startswith(f"error: {missing}: no such file")
    assert main(["eval", "tiny-random", "--task", "gsm8k"]) == 2
    assert "--task gsm8k scores a file: give --data FILE" in capsys.readouterr().out
    with pytest.raises(LowtuneError, match="override: eval.task gsm8k scores a file: set eval.data"):
        load_recipe(None, ["eval.task=gsm8k"])
    with pytest.raises(LowtuneError, match=f"override: eval.data {missing}: no such file"):
        load_recipe(None, ["eval.task=gsm8k", f"eval.data={missing}"])
