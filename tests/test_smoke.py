"""`lowtune train RECIPE --smoke`: any recipe for 2 steps and 2 held-out problems, saved as usual, marked as a smoke
run in the console and summary.json; done with overrides (`recipes.smoke_overrides`), the methods untouched."""

import json

import pytest
import yaml

from lowtune import recipes
from lowtune.cli import main
from lowtune.config import load_recipe
from lowtune.recipes import smoke_overrides


def smoke(tmp_path, capsys, name, *overrides):
    """`lowtune train NAME --smoke` on tiny-random: (the run directory, its summary.json, its config.yaml, stdout)."""
    runs = tmp_path / "runs"
    assert main(["train", name, "--smoke", "model.name=tiny-random", f"output.dir={runs}", *overrides]) == 0
    out = capsys.readouterr().out
    (run,) = runs.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    return run, summary, yaml.safe_load((run / "config.yaml").read_text()), out


def test_sft_smoke_run_takes_2_steps_and_2_heldout_problems_and_says_so(tmp_path, capsys, tiny_path):
    # A budget and periodic evaluation of the user's are off in a smoke run; the rest of the recipe stays.
    run, summary, config, out = smoke(tmp_path, capsys, "sft", "budget.minutes=5", "eval.every_minutes=1")
    assert "smoke run: train.max_steps=2 eval.n=2" in out and "smoke run: the recipe ran end to end (2 steps)" in out
    assert summary["smoke"] is True and summary["steps"] == 2
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 2 and summary["eval_during"] == []
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert config["train"]["max_steps"] == 2 and config["train"]["learning_rate"] == 3.0e-4  # the recipe's own
    assert config["budget"]["minutes"] is None and config["eval"]["every_minutes"] is None
    assert config["eval"]["n"] == 2 and config["eval"]["max_new_tokens"] == 16


def test_grpo_smoke_run_samples_short_completions(tmp_path, capsys, tiny_path):
    run, summary, config, out = smoke(tmp_path, capsys, "grpo", "--quiet")
    assert summary["smoke"] is True and summary["steps"] == 2 and summary["eval_after"]["n"] == 2
    assert config["train"]["max_completion_length"] == 16 and config["train"]["num_generations"] == 8
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("name", ["sft", "grpo", "ppo", "dpo", "reward", "toolformer"])
def test_smoke_overrides_fit_every_shipped_recipe(name):
    path = recipes.find_recipe(name)
    shipped = load_recipe(path)
    recipe = load_recipe(path, smoke_overrides(shipped))
    assert recipe.train["max_steps"] == 2 and recipe.eval.n == 2 and recipe.data.heldout == 2
    assert recipe.budget.minutes is None and recipe.eval.every_minutes is None
    sampled = recipe.train.get("max_completion_length", recipe.train.get("max_new_tokens"))
    assert sampled == (16 if name in ("grpo", "ppo") else None)
    # Toolformer annotates every training row before its first step: a smoke run annotates 8.
    assert recipe.data.max_rows == (8 if name == "toolformer" else shipped.data.max_rows)
    assert recipe.model == shipped.model and recipe.lora == shipped.lora and recipe.rewards == shipped.rewards


def test_smoke_starts_a_new_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--smoke"]) == 2
    assert "not a run directory" in capsys.readouterr().out
    (tmp_path / "config.yaml").write_text("method: sft\n")
    assert main(["train", "--resume", str(tmp_path), "--smoke"]) == 2
    assert "--smoke starts a new run: drop --resume" in capsys.readouterr().out
