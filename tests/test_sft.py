import json
from pathlib import Path

import pytest
import torch
import yaml

from lowtune import models, recipes
from lowtune.config import load_recipe
from lowtune.errors import LowtuneError


def test_sft_lowers_the_loss_and_writes_the_run_directory(tiny_recipe):
    recipe = load_recipe(
        None,
        [
            "model.name=tiny-random",
            "data.n_train=64",
            "train.max_steps=20",
            "train.learning_rate=1e-2",
            "train.per_device_train_batch_size=8",
            "train.logging_steps=1",
            "train.save_steps=10",
            "eval.task=null",
            f"output.dir={tiny_recipe.output.dir}",
            "output.quiet=true",
        ],
    )
    run, summary = recipes.train(recipe)

    metrics = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 20
    # A random 2-layer model learns the fixed answer format quickly; the mean of the last five
    # logged losses must be well below the first five.
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5

    assert json.loads(run.summary.read_text()) == summary
    assert summary["steps"] == 20 and summary["tokens"] > 0 and summary["peak_memory_mb"] > 0
    assert yaml.safe_load((run.path / "config.yaml").read_text())["train"]["max_steps"] == 20
    assert (run.adapter / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in run.checkpoints.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20"]


def test_adapter_loads_with_plain_peft_and_matches_lowtune(tiny_recipe):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny_recipe.train["learning_rate"] = 1e-2  # move the adapter away from its zero init
    run, _ = recipes.train(tiny_recipe)

    config = json.loads((run.adapter / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    plain = PeftModel.from_pretrained(base, str(run.adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.adapter)
    ours, _, _ = models.load_for_inference(str(run.path))

    batch = tokenizer(["What is 12 + 34?"], return_tensors="pt")
    with torch.no_grad():
        plain_logits = plain(**batch).logits
        with plain.disable_adapter():
            base_logits = plain(**batch).logits
        our_logits = ours(**batch).logits
    torch.testing.assert_close(our_logits, plain_logits)
    assert not torch.allclose(plain_logits, base_logits, atol=1e-4)  # the adapter does something


def test_existing_run_directory_is_never_overwritten(tiny_recipe):
    tiny_recipe.eval.task = None
    first, _ = recipes.train(tiny_recipe)
    marker = first.path / "keep.txt"
    marker.write_text("mine")
    second, _ = recipes.train(tiny_recipe)
    assert second.path != first.path and second.path.name == "sft-2"
    assert marker.read_text() == "mine"


def test_packing_trains(tiny_recipe, monkeypatch):
    from lowtune import training

    trainers, fit = [], training.fit
    monkeypatch.setattr(training, "fit", lambda trainer, *args: trainers.append(trainer) or fit(trainer, *args))
    tiny_recipe.train.update(packing=True, max_length=64)
    tiny_recipe.eval.task = None
    _, summary = recipes.train(tiny_recipe)
    assert summary["steps"] == 4 and summary["final_loss"] > 0
    # it packed: the 64 rows (about 30 tokens each) lie whole, two or more to a block, in blocks of at most 64 tokens
    packed = trainers[0].train_dataset
    assert "seq_lengths" in packed.column_names
    lengths, parts = [len(ids) for ids in packed["input_ids"]], packed["seq_lengths"]
    assert sum(len(p) for p in parts) == 64 and [sum(p) for p in parts] == lengths
    assert len(packed) < 64 and max(lengths) <= 64 and sum(len(p) >= 2 for p in parts) >= len(packed) - 1
    # and it trained on the blocks: a batch of 4 holds more than 4 sequences (positions restart at each), and the
    # 4 steps saw more tokens than 4 batches of 4 unpacked rows can hold
    batch = next(iter(trainers[0].get_train_dataloader()))
    assert int((batch["position_ids"] == 0).sum()) > 4
    assert summary["tokens"] > 4 * 4 * max(max(p) for p in parts)


def test_eval_before_and_after_are_recorded(tiny_recipe, monkeypatch):
    """The held-out accuracy is the share of replies whose answer is right: replies that answer 1 of 4 problems
    right before training and 3 of 4 after give exactly 0.25 and 0.75 (the model still generates each time)."""
    from lowtune import evaluate
    from lowtune.data import arithmetic

    answers = {p.question: p.answer for p in arithmetic.heldout(4, tiny_recipe.data.digits)}
    generate, replies = evaluate.generate, []

    def answer_some_right(model, tokenizer, questions, *args, **kwargs):
        assert len(generate(model, tokenizer, questions, *args, **kwargs)) == len(questions)
        right = 1 if not replies else 3
        replies.append([f"The answer is {answers[q] + (0 if k < right else 1)}." for k, q in enumerate(questions)])
        return replies[-1]

    monkeypatch.setattr(evaluate, "generate", answer_some_right)
    _, summary = recipes.train(tiny_recipe)
    for key in ("eval_before", "eval_after"):
        assert summary[key]["task"] == "arithmetic" and summary[key]["n"] == 4
        assert 0.0 <= summary[key]["accuracy"] <= 1.0
    assert len(replies) == 2 and all(len(r) == 4 for r in replies)
    assert summary["eval_before"]["accuracy"] == 0.25 and summary["eval_after"]["accuracy"] == 0.75
    assert summary["eval_before"]["example"] == replies[0][0] and summary["eval_after"]["example"] == replies[1][0]
    tokenizer = models.load_tokenizer(models.resolve_path(tiny_recipe.model.name))
    for key, said in zip(("eval_before", "eval_after"), replies, strict=True):  # the replies' mean token count
        lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in said]
        assert summary[key]["mean_reply_tokens"] == round(sum(lengths) / 4, 2) > 0


def test_bad_data_trains_nothing_and_leaves_no_run_directory(tiny_recipe, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "completion": ""}\n')
    tiny_recipe.data.source = str(bad)
    with pytest.raises(LowtuneError, match=r"bad\.jsonl:1: field 'completion' is empty"):
        recipes.train(tiny_recipe)
    assert list(Path(tiny_recipe.output.dir).iterdir()) == []


def _fake_augment_one(self, text):
    """Stands in for the model's annotation (tested on its own in test_toolformer.py): a call before the
    text's last number in every other row."""
    from lowtune.toolformer.augment import Augmented

    stats = self.stats["Calculator"]
    stats.texts += 1
    number = text.rstrip(" .").split()[-2]
    if stats.texts % 2:
        return Augmented(text, text)
    stats.kept += 1
    call = {"tool": "Calculator", "arg": f"{number} + 0", "result": number, "position": 0, "gain": 1.0}
    return Augmented(text, text.replace(f" {number} ", f" [Calculator({number} + 0) -> {number}] {number} "), [call])


def test_toolformer_augmentation_then_sft_on_the_annotated_rows(tmp_path, monkeypatch):
    from lowtune.toolformer.augment import Augmenter
    from lowtune.toolformer.calls import strip_calls

    monkeypatch.setattr(Augmenter, "augment_one", _fake_augment_one)
    recipe = load_recipe(None, [
        "model.name=tiny-random", "data.source=arithmetic-text", "data.n_train=6", "data.digits=3",
        "augment.tools=[calculator]", "train.max_steps=2", "train.per_device_train_batch_size=2",
        "eval.task=word_problems", "eval.n=2", "eval.tools=[calculator]", "eval.max_new_tokens=4",
        f"output.dir={tmp_path}", "output.quiet=true",
    ])  # fmt: skip
    run, summary = recipes.train(recipe)
    rows = [json.loads(line) for line in (run.path / "augmented.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and summary["rows"] == 6  # rows without a call train as they were
    assert [bool(r["calls"]) for r in rows] == [False, True] * 3
    assert all("[Calculator(" in r["annotated"] and strip_calls(r["annotated"]) == r["text"] for r in rows[1::2])
    assert (
        summary["augmentation"]["rows_with_calls"] == 3 and summary["augmentation"]["tools"]["Calculator"]["kept"] == 3
    )
    assert summary["eval_after"]["task"] == "word_problems" and summary["eval_after"]["tools"] == ["calculator"]
    assert (run.path / "adapter" / "adapter_config.json").is_file()


def test_toolformer_rows_only_with_calls_and_reused_on_resume(tmp_path, monkeypatch):
    from lowtune import data
    from lowtune.recipes import sft
    from lowtune.runs import RunDir
    from lowtune.toolformer.augment import Augmenter

    overrides = ["model.name=tiny-random", "data.source=arithmetic-text", "data.n_train=4", "data.digits=3",
                 "augment.tools=[calculator]", "augment.only_with_calls=true"]  # fmt: skip
    recipe = load_recipe(None, overrides)
    model, tokenizer = models.load(recipe.model, recipe.lora)
    dataset = data.load(recipe.data, kind="sft")
    run = RunDir(tmp_path)
    monkeypatch.setattr(Augmenter, "augment_one", _fake_augment_one)
    trained, stats = sft.toolformer(model, tokenizer, recipe, run, dataset)
    assert len(trained) == 2 and stats["rows_with_calls"] == 2  # only the annotated rows
    for record in trained:
        reply = record["completion"][-1]["content"]
        assert "[Calculator(" in reply and record["completion"][-1]["role"] == "assistant"
    assert [r["content"] for r in trained[0]["prompt"]] == [dataset[1]["prompt"][0]["content"]]

    def never(self, text):
        raise AssertionError("a resumed run must not annotate again")

    monkeypatch.setattr(Augmenter, "augment_one", never)
    again, stats_again = sft.toolformer(model, tokenizer, recipe, run, dataset)  # augmented.jsonl is there
    assert list(again) == list(trained) and stats_again == stats


def test_toolformer_with_no_kept_call_and_only_with_calls_says_what_to_do(tiny_recipe):
    tiny_recipe.data.source, tiny_recipe.data.n_train, tiny_recipe.data.digits = "arithmetic-text", 2, 3
    tiny_recipe.augment.tools, tiny_recipe.augment.only_with_calls = ["calculator"], True
    tiny_recipe.augment.top_k, tiny_recipe.augment.samples = 1, 1
    with pytest.raises(LowtuneError, match="kept no call in 2 rows.*augment.tau_f"):
        recipes.train(tiny_recipe)
