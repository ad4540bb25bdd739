import json
from pathlib import Path

import pytest

from lowtune import data
from lowtune.config import DataConfig
from lowtune.data import arithmetic
from lowtune.errors import LowtuneError


def test_arithmetic_is_deterministic_and_never_overlaps_heldout():
    train = arithmetic.train(3000, digits=2, operations=["+", "-"], seed=7)
    assert train == arithmetic.train(3000, digits=2, operations=["+", "-"], seed=7)
    assert train != arithmetic.train(3000, digits=2, operations=["+", "-"], seed=8)
    assert len(set(train)) == len(train)
    heldout = set(arithmetic.heldout(500, digits=2, operations=["-", "+"]))
    assert len(heldout) == 500 and not heldout & set(train)
    assert all(all(10 <= t <= 99 for t in p.terms) and len(p.terms) == 2 and p.ops[0] in "+-" for p in train)


def test_heldout_does_not_depend_on_training_seed_and_prefixes_are_stable():
    assert arithmetic.heldout(50) == arithmetic.heldout(100)[:50]
    p = arithmetic.heldout(1, digits=1, operations=["*"])[0]
    a, b = p.terms
    assert p.answer == a * b and p.solution == f"{a} * {b} = {a * b}"


def test_more_operands_follow_precedence_and_stay_disjoint():
    p = arithmetic.Problem((2, 3, 4, 5), ("+", "*", "-"))
    assert p.question == "What is 2 + 3 * 4 - 5?" and p.answer == 9
    assert arithmetic.Problem((7, 2, 3), ("-", "-")).answer == 2
    assert arithmetic.Problem((2, 3, 4), ("*", "*")).answer == 24
    train = arithmetic.train(300, digits=1, operations=["+", "-", "*"], operands=3)
    heldout = set(arithmetic.heldout(100, digits=1, operations=["+", "-", "*"], operands=3))
    assert all(len(p.terms) == 3 for p in train) and not heldout & set(train)
    for p in train[:50]:  # the answer is what Python computes for the same expression
        assert p.answer == eval(p.expression)  # noqa: S307 - a test oracle on our own digits and operators


def test_small_space_gives_all_remaining_problems():
    # 1-digit addition has 100 problems; 20 are held out, so at most 80 train.
    assert len(arithmetic.train(500, digits=1, operations=["+"])) == 80


def test_arithmetic_rows_become_prompt_completion_chat():
    ds = data.load(DataConfig(n_train=10), kind="sft")
    assert len(ds) == 10
    row = ds[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].startswith("What is")
    assert row["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}]


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_messages_file_with_system_turn(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
            ]
        }
    ]
    ds = data.load(DataConfig(source=str(write_jsonl(tmp_path / "d.jsonl", rows))))
    assert [m["role"] for m in ds[0]["prompt"]] == ["system", "user"]
    assert ds[0]["completion"][0]["content"] == "Hello."


def test_every_bad_row_is_reported_with_file_line_and_field(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "1+1?", "completion": "2"},
            {"prompt": "2+2?"},
            {"prompt": "3+3?", "completion": "   "},
            {"prompt": 5, "completion": "x"},
            {"prompt": "ok", "completion": "fine"},
        ],
    )
    with pytest.raises(LowtuneError) as e:
        data.load(DataConfig(source=str(path)))
    msg = str(e.value)
    assert "3 bad row(s)" in msg and "nothing was trained" in msg
    assert f"{path}:2: field 'completion' is missing" in msg
    assert f"{path}:3: field 'completion' is empty" in msg
    assert f"{path}:4: field 'prompt' must be a string, got int" in msg


def test_bad_messages_rows(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]},
            {"messages": []},
        ],
    )
    with pytest.raises(LowtuneError) as e:
        data.load(DataConfig(source=str(path)))
    msg = str(e.value)
    assert f"{path}:1: field 'messages[1].role' is 'robot'" in msg
    assert f"{path}:2: field 'messages[1].role': the last turn must be the assistant's" in msg
    assert f"{path}:3: field 'messages' must be a non-empty list" in msg


def test_invalid_json_line_is_named(tmp_path):
    path = write_jsonl(tmp_path / "j.jsonl", [{"text": "fine"}, '{"text": oops}'])
    with pytest.raises(LowtuneError, match=r"j\.jsonl:2: not valid JSON"):
        data.load(DataConfig(source=str(path)))


def test_csv_reports_file_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nq1,a1\nq2,\n")
    with pytest.raises(LowtuneError, match=r"d\.csv:3: field 'completion' is empty"):
        data.load(DataConfig(source=str(path)))


def test_text_and_json_list_and_parquet(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps([{"text": "a b c"}, {"text": "d e"}]))
    assert data.load(DataConfig(source=str(tmp_path / "t.json")))["text"] == ["a b c", "d e"]
    from datasets import Dataset

    Dataset.from_list([{"prompt": "p", "completion": "c"}]).to_parquet(str(tmp_path / "p.parquet"))
    assert data.load(DataConfig(source=str(tmp_path / "p.parquet")))[0] == {"prompt": "p", "completion": "c"}


def test_unknown_columns_and_missing_file(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"input": "q", "output": "a"}])
    with pytest.raises(LowtuneError, match=r"x\.jsonl:1: cannot tell the data format"):
        data.load(DataConfig(source=str(path)))
    with pytest.raises(LowtuneError, match="not found"):
        data.load(DataConfig(source=str(tmp_path / "missing.jsonl")))


def test_max_rows_samples_deterministically(tmp_path):
    rows = [{"text": f"row {i}"} for i in range(50)]
    cfg = DataConfig(source=str(write_jsonl(tmp_path / "t.jsonl", rows)), max_rows=5)
    first = data.load(cfg)["text"]
    assert len(first) == 5 and first == data.load(cfg)["text"]


def test_directory_source_reads_the_split_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a"}])
    write_jsonl(tmp_path / "test.jsonl", [{"text": "b"}, {"text": "c"}])
    assert data.load(DataConfig(source=str(tmp_path)))["text"] == ["a"]
    assert data.load(DataConfig(source=str(tmp_path), split="test"))["text"] == ["b", "c"]


def test_hub_dataset_unreachable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LowtuneError, match=r"could not load dataset 'someone/nonexistent-set' \(split train\)"):
        data.load(DataConfig(source="someone/nonexistent-set"))


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_gsm8k_rows_for_grpo_and_sft():
    path = SHARED / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is not present (shared data sets live beside the repository)")
    prompts = data.load(DataConfig(source=str(path)), kind="prompt", system_prompt="Think first.")
    assert len(prompts) == 1319
    first = json.loads(path.read_text().splitlines()[0])
    assert prompts[0]["prompt"] == [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": first["question"]},
    ]
    assert prompts[0]["answer"] == first["answer"].rsplit("####", 1)[1].strip()
    assert len([float(a) for a in prompts["answer"]]) == 1319  # every reference parses as a number (else ValueError)
    sft = data.load(DataConfig(source=str(path), max_rows=3), kind="sft")
    assert all("<<" not in r["completion"][0]["content"] and "####" in r["completion"][0]["content"] for r in sft)


def test_prompt_rows_need_an_answer(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "What is 2 + 2?", "answer": 4},
            {"prompt": "What is 3 + 3?"},
            {"prompt": [{"role": "user", "content": "hi"}], "answer": ""},
            {"question": "q", "answer": "no final line"},
        ],
    )
    with pytest.raises(LowtuneError) as e:
        data.load(DataConfig(source=str(path)), kind="prompt")
    msg = str(e.value)
    assert "3 bad row(s)" in msg
    assert f"{path}:2: field 'answer' is missing" in msg and f"{path}:3: field 'answer' is missing or empty" in msg


def test_text_data_cannot_train_grpo(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}])
    with pytest.raises(LowtuneError, match="text data cannot train this method"):
        data.load(DataConfig(source=str(path)), kind="prompt")


def test_arithmetic_prompts_carry_the_answer():
    ds = data.load(DataConfig(n_train=5), kind="prompt")
    for row in ds:
        assert [m["role"] for m in row["prompt"]] == ["user"]
        a, op, b = row["prompt"][0]["content"].removeprefix("What is ").rstrip("?").split()
        assert int(row["answer"]) == {"+": int(a) + int(b)}[op]


def test_one_format_table_detects_rows_and_pairs():
    """One table, two families: a method's family is searched in the table's order, so a preference set with a
    `messages` column (as UltraFeedback has) is pairs for DPO and conversations for SFT."""
    transcript = "\n\nHuman: hi\n\nAssistant: hello"
    assert set(data.FORMATS) == {f for kind in data.KINDS.values() for f in kind}
    assert data.detect_format({"prompt": "p", "answer": 1}, "w", "prompt") == "prompt_answer"
    assert data.detect_format({"prompt": "p", "completion": "c"}, "w", "prompt") == "prompt_completion"
    both = {"prompt": "p", "chosen": "a", "rejected": "b", "messages": []}
    assert data.detect_format(both, "w") == "messages"
    assert data.detect_format(both, "w", "preference") == "preference"
    assert data.detect_format({"chosen": "a", "rejected": "b"}, "w", "preference") == "preference_implicit"
    assert data.detect_format({"chosen": transcript, "rejected": transcript}, "w", "preference") == "hh_rlhf"
    with pytest.raises(LowtuneError, match=r"^f:3: cannot tell the data format from columns \['chosen', 'rejected'\]"):
        data.detect_format({"chosen": "a", "rejected": "b"}, "f:3")
    with pytest.raises(LowtuneError, match=r"^f:3: cannot tell the preference format from columns \['text'\]"):
        data.detect_format({"text": "t"}, "f:3", "preference")


@pytest.mark.parametrize("package", ["data", "tools", "toolformer"])
def test_modules_import_public_names_at_the_top_without_cycles(package):
    """Within lowtune's data, tools and toolformer packages no module imports another's private (`_name`)
    names, every import of lowtune is at the top of its module or inside a function, and the modules of a
    package import each other without a cycle."""
    import ast

    root = Path(data.__file__).parent.parent / package
    graph = {}
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        module = f"lowtune.{package}" + ("" if path.stem == "__init__" else f".{path.stem}")
        graph[module] = set()
        seen_code = False
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign)):
                seen_code = True
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lowtune"):
                assert not seen_code, f"{path.name}:{node.lineno}: an import below code"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lowtune"):
                assert not [a.name for a in node.names if a.name.startswith("_")], f"{path.name}:{node.lineno}"
                if node.module.startswith(f"lowtune.{package}."):
                    graph[module].add(node.module)
                elif node.module == f"lowtune.{package}":  # a submodule, or a name the package's __init__ defines
                    graph[module] |= {f"{node.module}.{a.name}" if (root / f"{a.name}.py").exists() else node.module
                                      for a in node.names}  # fmt: skip

    def visit(module, trail):
        assert module not in trail, " -> ".join([*trail, module])
        for dep in graph.get(module, ()):
            visit(dep, [*trail, module])

    for module in graph:
        visit(module, [])


def test_prompt_rows_whose_prompt_is_a_conversation(tmp_path):
    """{prompt: [messages], answer}: the conversation is the prompt (no assistant reply needed at its end)."""
    path = tmp_path / "prompts.jsonl"
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    path.write_text(json.dumps({"prompt": conversation, "answer": 5}) + "\n")
    prompts = data.load(DataConfig(source=str(path)), kind="prompt")
    assert prompts[0]["prompt"] == conversation and prompts[0]["answer"] == "5"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": " "}], "answer": 5}) + "\n")
    with pytest.raises(LowtuneError, match=r"prompts.jsonl:1: .*field 'prompt\[0\].content' is missing or empty"):
        data.load(DataConfig(source=str(path)), kind="prompt")
