"""Online DPO on tiny-random: two sampled completions per prompt ranked by a rule reward, the reference the base
with the adapter off; a run trains, saves a plain PEFT adapter and resumes after SIGTERM."""

import json
import math

from tests.conftest import LEARNABLE_REWARD, TINY_RUN, check_plain_peft_adapter, train_stopped_and_resumed


def test_online_dpo_trains_saves_a_plain_peft_adapter_and_resumes_after_sigterm(tmp_path):
    args = ["train", "online_dpo", *TINY_RUN, "data.n_train=48", "train.per_device_train_batch_size=4",
            "train.max_new_tokens=8"]  # fmt: skip
    run, whole = train_stopped_and_resumed(tmp_path, args, LEARNABLE_REWARD)
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["method"] == "online_dpo" and summary["rewards"] == {"low_token_share": 1.0}
    assert summary["loss_type"] == "sigmoid" and summary["steps"] == 6 and math.isfinite(summary["final_loss"])
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 4
    check_plain_peft_adapter(whole / "adapter")
    for path in (run, whole):  # the learnable reward ranked the pairs, before and after the stop
        logs = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logs if "objective/scores" in r] == list(range(1, 7))
