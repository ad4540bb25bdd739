import json

import pytest

from lowtune import recipes
from lowtune.config import REASONING_PROMPT, load_recipe
from lowtune.errors import LowtuneError


def grpo_recipe(tmp_path, *overrides):
    return load_recipe(
        recipes.find_recipe("grpo"),
        [
            "model.name=tiny-random", "data.n_train=16", "train.max_steps=2", "train.num_generations=4",
            "train.per_device_train_batch_size=4", "train.max_completion_length=8", "eval.n=4",
            "eval.max_new_tokens=4", f"output.dir={tmp_path}", "output.quiet=true", *overrides,
        ],
    )  # fmt: skip


def test_grpo_runs_and_logs_every_reward(tmp_path):
    recipe = grpo_recipe(tmp_path, "rewards.format=0.5", "rewards.length=0.25")
    run, summary = recipes.train(recipe)
    logs = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    steps = [r for r in logs if "reward" in r]
    assert len(steps) == 2
    for name in ("accuracy_reward", "format_reward", "length_reward"):
        assert all(f"rewards/{name}/mean" in r for r in steps)
    assert all("completions/mean_length" in r for r in steps)
    assert summary["rewards"] == {"accuracy_reward": 1.0, "format_reward": 0.5, "length_reward": 0.25}
    assert (run.adapter / "adapter_model.safetensors").is_file()
    assert summary["eval_before"]["n"] == 4 and summary["eval_after"]["n"] == 4


def test_reasoning_prompt_is_the_default_and_can_be_turned_off(tmp_path):
    assert load_recipe(None, ["method=grpo"]).system_prompt() == REASONING_PROMPT
    assert grpo_recipe(tmp_path, "data.system_prompt=auto").system_prompt() == REASONING_PROMPT
    assert grpo_recipe(tmp_path).system_prompt() is None  # the shipped CPU recipe turns it off (see its comment)
    assert load_recipe(None, ["method=sft"]).system_prompt() is None


def test_all_rewards_off_is_an_error(tmp_path):
    recipe = grpo_recipe(tmp_path, "rewards.accuracy=0")
    with pytest.raises(LowtuneError, match="every weight is 0"):
        recipes.train(recipe)
    assert list(tmp_path.iterdir()) == []
