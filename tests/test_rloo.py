"""RLOO on tiny-random: GRPO's prompts and rule rewards with a leave-one-out baseline; a run trains, saves a plain
PEFT adapter and resumes after SIGTERM."""

import json
import math

import pytest

from lowtune import recipes
from lowtune.config import REASONING_PROMPT, load_recipe
from lowtune.errors import LowtuneError
from tests.conftest import LEARNABLE_REWARD, TINY_RUN, check_plain_peft_adapter, train_stopped_and_resumed

SMALL = ["data.n_train=48", "train.per_device_train_batch_size=4", "train.num_generations=4",
         "train.max_completion_length=8"]  # fmt: skip


def test_rloo_trains_saves_a_plain_peft_adapter_and_resumes_after_sigterm(tmp_path):
    run, whole = train_stopped_and_resumed(tmp_path, ["train", "rloo", *TINY_RUN, *SMALL], LEARNABLE_REWARD)
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["method"] == "rloo" and summary["rewards"] == {"low_token_share": 1.0}
    assert summary["logprob_kernel"] in ("lowtune", "trl")
    assert summary["steps"] == 6 and math.isfinite(summary["final_loss"])
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 4
    check_plain_peft_adapter(whole / "adapter")
    for path in (run, whole):  # the learnable reward was the one trained on, before and after the stop
        logs = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logs if "rewards/low_token_share/mean" in r] == list(range(1, 7))


def test_reasoning_prompt_is_the_default_of_the_sampling_methods():
    for method in ("grpo", "rloo", "online_dpo"):
        assert load_recipe(None, [f"method={method}"]).system_prompt() == REASONING_PROMPT
    for method in ("kto", "orpo", "dpo"):
        assert load_recipe(None, [f"method={method}"]).system_prompt() is None


def test_all_rewards_off_is_an_error(tmp_path):
    recipe = load_recipe(recipes.find_recipe("rloo"), [*TINY_RUN, *SMALL, "rewards.accuracy=0",
                                                       f"output.dir={tmp_path}"])  # fmt: skip
    with pytest.raises(LowtuneError, match="every weight is 0"):
        recipes.train(recipe)
    assert list(tmp_path.iterdir()) == []
