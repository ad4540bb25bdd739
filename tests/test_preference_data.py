"""Preference data: every format to one shape, the HH-RLHF adapter on real rows, row-level errors, arithmetic pairs."""

import gzip
import json
import random
from pathlib import Path

import pytest

from lowtune.config import load_recipe
from lowtune.data import arithmetic, load_pairs
from lowtune.data.preference import transcript_turns
from lowtune.errors import LowtuneError

HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
needs_hh = pytest.mark.skipif(not HH.is_file(), reason="../shared/data/hh-rlhf is not beside the project")

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]
CHOSEN = [{"role": "assistant", "content": "2 + 2 = 4"}]
REJECTED = [{"role": "assistant", "content": "2 + 2 = 5"}]
EXPECTED = {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}


def write(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pairs(path, *overrides):
    recipe = load_recipe(None, ["method=dpo", f"data.source={path}", "data.heldout=0", *overrides])
    return load_pairs(recipe.data, recipe.system_prompt())


@pytest.mark.parametrize(
    "row, fmt",
    [
        ({"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4", "rejected": "2 + 2 = 5"}, "preference"),
        ({"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}, "preference"),
        ({"chosen": PROMPT + CHOSEN, "rejected": PROMPT + REJECTED}, "preference_implicit"),
        ({"chosen": "\n\nHuman: What is 2 + 2?\n\nAssistant: 2 + 2 = 4",
          "rejected": "\n\nHuman: What is 2 + 2?\n\nAssistant: 2 + 2 = 5"}, "hh_rlhf"),
    ],
)  # fmt: skip
def test_every_format_parses_into_the_same_record(tmp_path, row, fmt):
    loaded = pairs(write(tmp_path, [row]))
    assert loaded.format == fmt
    assert loaded.train[0] == EXPECTED
    assert loaded.heldout is None


def test_implicit_prompt_in_plain_strings_splits_at_a_word_boundary(tmp_path):
    row = {"chosen": "Q: what is 12 + 19? A: 31", "rejected": "Q: what is 12 + 19? A: 32"}
    record = pairs(write(tmp_path, [row])).train[0]
    assert record["prompt"] == [{"role": "user", "content": "Q: what is 12 + 19? A:"}]
    assert record["chosen"][0]["content"] == "31" and record["rejected"][0]["content"] == "32"


def test_multi_turn_implicit_conversations_keep_earlier_turns_in_the_prompt(tmp_path):
    shared = [*PROMPT, {"role": "assistant", "content": "4"}, {"role": "user", "content": "Sure?"}]
    row = {
        "chosen": shared + [{"role": "assistant", "content": "Yes."}],
        "rejected": shared + [{"role": "assistant", "content": "No, 5."}],
    }
    record = pairs(write(tmp_path, [row])).train[0]
    assert record["prompt"] == shared
    assert record["chosen"] == [{"role": "assistant", "content": "Yes."}]


def test_system_prompt_is_prepended(tmp_path):
    row = {"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4", "rejected": "2 + 2 = 5"}
    loaded = pairs(write(tmp_path, [row]), "data.system_prompt=Be brief.")
    assert loaded.train[0]["prompt"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    "row, field, problem",
    [
        ({"prompt": "p", "chosen": "a"}, "field 'rejected'", "missing"),
        ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "field 'chosen'", "empty reply"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "field 'rejected'", "identical"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "field 'prompt'", "non-empty"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, "field 'chosen'", "string or a list"),
        ({"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
         "field 'chosen[0].role'", "assistant"),
        ({"chosen": "abc", "rejected": "xyz"}, "fields 'chosen' and 'rejected'", "share no prompt"),
        ({"chosen": PROMPT + CHOSEN, "rejected": "2 + 2 = 5"}, "fields 'chosen' and 'rejected'", "both be strings"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
         "field 'chosen'", "final Assistant reply is empty"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: ok\n\nAssistant: bye",
          "rejected": "\n\nHuman: hey\n\nAssistant: hello\n\nHuman: ok\n\nAssistant: go"},
         "field 'rejected'", "do not share a prefix (turn 1 differs)"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: a\n\nHuman: b\n\nAssistant: c",
          "rejected": "\n\nHuman: hi\n\nAssistant: x"}, "field 'rejected'", "do not share a prefix"),
    ],
)  # fmt: skip
def test_each_validation_error_names_file_line_and_field(tmp_path, row, field, problem):
    good = {"prompt": "What is 1 + 1?", "chosen": "2", "rejected": "3"}
    if "prompt" not in row:  # keep the file's format the bad row's own
        good = {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}
        if not isinstance(row["chosen"], str) or "Human:" not in row["chosen"]:
            good = {"chosen": PROMPT + CHOSEN, "rejected": PROMPT + REJECTED}
    path = write(tmp_path, [good, row])
    with pytest.raises(LowtuneError) as e:
        pairs(path)
    message = str(e.value)
    assert f"{path}:2: {field}" in message
    assert problem in message
    assert "1 bad row(s)" in message and "data.bad_rows=skip" in message


def test_bad_rows_skip_drops_and_reports_them(tmp_path, capsys):
    good = {"prompt": "What is 1 + 1?", "chosen": "2", "rejected": "3"}
    path = write(tmp_path, [good, {"prompt": "p", "chosen": "x", "rejected": "x"}, good])
    loaded = pairs(path, "data.bad_rows=skip")
    assert len(loaded.train) == 2
    assert loaded.skipped == [f"{path}:2: field 'rejected' is identical to 'chosen': a pair must differ"]
    assert f"{path}:2" in capsys.readouterr().out


def test_wrong_kind_of_data_is_refused(tmp_path):
    path = write(tmp_path, [{"messages": PROMPT + CHOSEN}])
    with pytest.raises(LowtuneError, match="cannot tell the preference format"):
        pairs(path)
    path = write(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(LowtuneError, match="text data cannot train a reward model or DPO"):
        pairs(path, "data.format=text")


def test_heldout_rows_are_the_last_ones(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(10)]
    path = write(tmp_path, rows)
    loaded = pairs(path, "data.heldout=3")
    assert [r["prompt"][0]["content"] for r in loaded.heldout] == ["q7", "q8", "q9"]
    assert [r["prompt"][0]["content"] for r in loaded.train] == [f"q{i}" for i in range(7)]
    assert len(pairs(path, "data.heldout=0.2").heldout) == 2
    assert len(load_pairs(load_recipe(None, ["method=dpo", f"data.source={path}"]).data).heldout) == 1  # 10%
    with pytest.raises(LowtuneError, match="leaves no rows to train on"):
        pairs(path, "data.heldout=10")
    with pytest.raises(LowtuneError, match="data.heldout is a row count or a fraction"):
        load_recipe(None, ["method=dpo", "data.heldout=-1"])


def test_gzip_files_are_read(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4", "rejected": "2 + 2 = 5"}) + "\n")
    assert pairs(path).train[0] == EXPECTED


@needs_hh
def test_hh_rlhf_adapter_on_the_real_file():
    recipe = load_recipe(None, ["method=reward", f"data.source={HH}", "data.heldout=500"])
    with pytest.raises(LowtuneError) as e:  # the public file has 9 malformed pairs; each is named
        load_pairs(recipe.data)
    assert "9 bad row(s) in the hh_rlhf data" in str(e.value)
    assert f"{HH}:87: field 'chosen': the final Assistant reply is empty" in str(e.value)
    assert f"{HH}:1255: field 'rejected': the transcripts do not share a prefix" in str(e.value)

    recipe.data.bad_rows = "skip"
    loaded = load_pairs(recipe.data)
    assert loaded.format == "hh_rlhf"
    assert (len(loaded.train), len(loaded.heldout), len(loaded.skipped)) == (1806, 497, 9)
    with gzip.open(HH, "rt") as f:
        raw = [json.loads(line) for line in f]
    first = loaded.train[0]
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    assert raw[0]["chosen"].endswith(first["chosen"][0]["content"])
    assert raw[0]["rejected"].endswith(first["rejected"][0]["content"])
    # Held out by position: the last 500 rows of the file (less the bad ones), none of them trained on.
    last = transcript_turns(raw[-1]["chosen"])
    assert loaded.heldout[-1]["prompt"] == last[:-1]
    train_keys = {json.dumps(r["prompt"] + r["chosen"]) for r in loaded.train}
    assert not any(json.dumps(r["prompt"] + r["chosen"]) in train_keys for r in loaded.heldout)


def test_arithmetic_pairs_are_deterministic_and_plausibly_wrong():
    recipe = load_recipe(None, ["method=dpo", "data.n_train=200", "data.heldout=50"])
    a, b = load_pairs(recipe.data), load_pairs(recipe.data)
    assert a.train.to_list() == b.train.to_list() and a.format == "arithmetic"
    recipe.data.seed = 1
    c = load_pairs(recipe.data)
    assert c.train.to_list() != a.train.to_list()
    assert c.heldout.to_list() == a.heldout.to_list()  # held-out pairs do not depend on the training seed
    for record in a.train:
        question = record["prompt"][0]["content"]
        chosen, rejected = record["chosen"][0]["content"], record["rejected"][0]["content"]
        left, answer = chosen.split(" = ")
        assert question == f"What is {left}?"
        assert rejected.startswith(left + " = ") and rejected != chosen
        assert int(answer) == eval(left)  # noqa: S307 (our own "a + b" text)
    heldout_questions = {r["prompt"][0]["content"] for r in a.heldout}
    assert not heldout_questions & {r["prompt"][0]["content"] for r in a.train}


def test_wrong_answers_cover_the_named_mistakes():
    p = arithmetic.Problem((47, 38), ("+",))  # 85: a dropped carry gives 75, swapped digits 58
    wrong = {arithmetic.wrong_answer(p, random.Random(i)) for i in range(200)}
    assert {75, 95, 58, 84, 86, 9} <= wrong  # carry -/+10, swapped digits, off by one, + read as -
    assert 85 not in wrong and all(w >= 0 for w in wrong)
