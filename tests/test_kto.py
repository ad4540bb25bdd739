"""KTO on tiny-random: unpaired data (its own format, or pairs split in two), the reference is the base with the
adapter off, and a run trains, saves a plain PEFT adapter and resumes after SIGTERM."""

import json
import math

import pytest

from lowtune import data, models, recipes
from lowtune.config import load_recipe
from lowtune.errors import LowtuneError
from lowtune.recipes import kto
from lowtune.runs import RunDir
from tests.conftest import TINY_RUN, check_plain_peft_adapter, train_stopped_and_resumed


def kto_data(*overrides):
    return load_recipe(None, ["method=kto", *overrides]).data


def write_unpaired(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_kto_trains_saves_a_plain_peft_adapter_and_resumes_after_sigterm(tmp_path):
    args = ["train", "kto", *TINY_RUN, "data.n_train=24", "train.per_device_train_batch_size=4"]
    run, whole = train_stopped_and_resumed(tmp_path, args)
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["method"] == "kto" and summary["data_format"] == "arithmetic" and summary["loss_type"] == "kto"
    assert summary["rows"] == 48 and summary["desirable"] == summary["undesirable"] == 24
    assert summary["steps"] == 6 and math.isfinite(summary["final_loss"])
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 4
    check_plain_peft_adapter(whole / "adapter")


@pytest.mark.parametrize("source", ["arithmetic", "file"])
def test_pairs_split_into_alternating_rows_whose_kl_partner_has_another_prompt(tmp_path, separable_pairs, source):
    """Each pair gives a desirable row (its chosen reply) and an undesirable one (its rejected reply), every pair
    trains (none held out), and the labels alternate. TRL estimates KTO's KL term from each row's prompt with the
    previous row's completion (a batch's first row with its last row's): that row must have another prompt."""
    where = "data.n_train=12" if source == "arithmetic" else f"data.source={separable_pairs(tmp_path / 'p.jsonl', 12)}"
    pairs = data.load_pairs(kto_data(where, "data.heldout=0")).train.to_list()
    rows = data.load_unpaired(kto_data(where))
    assert rows.format == ("arithmetic" if source == "arithmetic" else "preference")
    assert rows.desirable == rows.undesirable == 12
    want = []
    for i, pair in enumerate(pairs):
        behind = pairs[i - 6]
        want.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        want.append({"prompt": behind["prompt"], "completion": behind["rejected"], "label": False})
    assert rows.train.to_list() == want
    for batch in (2, 4, 6, 8, 12):
        for start in range(0, len(want), batch):
            part = want[start : start + batch]
            assert all(part[i - 1]["prompt"] != part[i]["prompt"] for i in range(len(part))), (batch, start)


def test_unpaired_file_loads_shuffled_with_the_system_prompt(tmp_path):
    rows = [{"prompt": f"question {i}", "completion": f"reply {i}", "label": i < 5} for i in range(10)]
    rows[3]["label"] = "False"  # a CSV-style string
    path = write_unpaired(tmp_path / "u.jsonl", rows)
    loaded = data.load_unpaired(kto_data(f"data.source={path}"), system_prompt="Be brief.")
    assert loaded.format == "unpaired" and (loaded.desirable, loaded.undesirable) == (4, 6)
    assert [r["label"] for r in loaded.train] != [r["label"] is True for r in rows]  # shuffled by data.seed
    first = loaded.train[0]
    assert first["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert first["completion"] == [{"role": "assistant", "content": first["prompt"][1]["content"].replace(
        "question", "reply")}]  # fmt: skip
    again = data.load_unpaired(kto_data(f"data.source={path}"), system_prompt="Be brief.")
    assert again.train.to_list() == loaded.train.to_list()


def test_unpaired_errors_name_file_line_and_field(tmp_path):
    path = write_unpaired(
        tmp_path / "u.jsonl",
        [{"prompt": "a", "completion": "b", "label": True}, {"prompt": "a", "completion": "c", "label": "yes"},
         {"prompt": "a", "completion": "", "label": False}, {"prompt": "a", "completion": "d", "label": 1},
         {"prompt": "a", "completion": "e"}],
    )  # fmt: skip
    with pytest.raises(LowtuneError) as e:
        data.load_unpaired(kto_data(f"data.source={path}"))
    message = str(e.value)
    assert "4 bad row(s) in the unpaired data" in message
    assert f"{path}:2: field 'label' must be true (desirable) or false (undesirable), got 'yes'" in message
    assert f"{path}:3: field 'completion' is an empty reply" in message
    assert f"{path}:4: field 'label' must be true (desirable) or false (undesirable), got 1" in message
    assert f"{path}:5: field 'label' is missing" in message


@pytest.mark.parametrize("label, only", [(True, "desirable (label true)"), (False, "undesirable (label false)")])
def test_one_label_only_is_refused(tmp_path, label, only):
    path = write_unpaired(tmp_path / "u.jsonl", [{"prompt": "a", "completion": c, "label": label} for c in "bc"])
    with pytest.raises(LowtuneError, match="KTO needs both desirable and undesirable examples: ") as e:
        data.load_unpaired(kto_data(f"data.source={path}"))
    assert f"{path} has only {only} rows" in str(e.value)


def test_unpaired_data_trains_neither_sft_nor_dpo(tmp_path):
    path = write_unpaired(tmp_path / "u.jsonl", [{"prompt": "a", "completion": "b", "label": False}])
    with pytest.raises(LowtuneError, match="unpaired data cannot train this method"):
        data.load(kto_data(f"data.source={path}"))  # not misread as SFT's prompt_completion
    with pytest.raises(LowtuneError, match="unpaired data cannot train a reward model or DPO/ORPO"):
        data.load_pairs(kto_data(f"data.source={path}"))
    text = write_unpaired(tmp_path / "t.jsonl", [{"text": "hello"}])
    with pytest.raises(LowtuneError, match="cannot tell the KTO format from columns"):
        data.load_unpaired(kto_data(f"data.source={text}"))


def test_reference_is_the_base_with_the_adapter_off(tmp_path):
    path = write_unpaired(tmp_path / "u.jsonl", [{"prompt": f"q{i}", "completion": "r", "label": i % 2 == 0}
                                                 for i in range(8)])  # fmt: skip
    recipe = load_recipe(
        None, ["method=kto", "model.name=tiny-random", f"data.source={path}", f"output.dir={tmp_path / 'runs'}"]
    )
    base, tokenizer = models.load(recipe.model)
    trainer = kto.make_trainer(
        recipe, recipes.trl_args(recipe, RunDir.create(recipe)), base, tokenizer, data.load_unpaired(recipe.data)
    )
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    assert trainer.args.train_sampling_strategy == "sequential"  # the rows' order, which the KL estimate needs


def test_lowtune_kernel_is_refused_for_kto(tmp_path):
    recipe = load_recipe(None, ["method=kto", "model.name=tiny-random", "model.logprob_kernel=lowtune",
                                f"output.dir={tmp_path}"])  # fmt: skip
    with pytest.raises(LowtuneError, match="KTO uses TRL's chunked log-probs"):
        recipes.train(recipe)
    assert list(tmp_path.iterdir()) == []
