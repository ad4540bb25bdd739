"""ORPO on tiny-random: DPO's pairs, no reference model; a run trains, saves a plain PEFT adapter, scores the
held-out pairs and resumes after SIGTERM."""

import json
import math

from tests.conftest import TINY_RUN, check_plain_peft_adapter, train_stopped_and_resumed


def test_orpo_trains_saves_a_plain_peft_adapter_and_resumes_after_sigterm(tmp_path):
    args = ["train", "orpo", *TINY_RUN, "data.n_train=24", "data.heldout=6", "train.per_device_train_batch_size=4"]
    run, whole = train_stopped_and_resumed(tmp_path, args)
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["method"] == "orpo" and summary["data_format"] == "arithmetic" and summary["beta"] == 0.1
    assert summary["rows"] == 24 and summary["steps"] == 6 and math.isfinite(summary["final_loss"])
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 4
    preference = summary["preference_after"]
    assert preference["n"] == 6 and 0 <= preference["accuracy"] <= 1
    margin = preference["chosen_reward"] - preference["rejected_reward"]
    assert math.isclose(preference["mean_margin"], margin, abs_tol=1e-6)
    check_plain_peft_adapter(whole / "adapter")
