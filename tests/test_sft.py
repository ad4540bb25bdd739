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


def test_packing_trains(tiny_recipe):
    tiny_recipe.train.update(packing=True, max_length=64)
    tiny_recipe.eval.task = None
    _, summary = recipes.train(tiny_recipe)
    assert summary["steps"] == 4 and summary["final_loss"] > 0


def test_eval_before_and_after_are_recorded(tiny_recipe):
    _, summary = recipes.train(tiny_recipe)
    for key in ("eval_before", "eval_after"):
        assert summary[key]["task"] == "arithmetic" and summary[key]["n"] == 4
        assert 0.0 <= summary[key]["accuracy"] <= 1.0


def test_bad_data_trains_nothing_and_leaves_no_run_directory(tiny_recipe, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "completion": ""}\n')
    tiny_recipe.data.source = str(bad)
    with pytest.raises(LowtuneError, match=r"bad\.jsonl:1: field 'completion' is empty"):
        recipes.train(tiny_recipe)
    assert list(Path(tiny_recipe.output.dir).iterdir()) == []
