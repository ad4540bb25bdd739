"""Killed or stopped runs resume to the same adapter; a NaN stops a run and keeps the last good checkpoint."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lowtune import recipes
from lowtune.config import load_recipe
from lowtune.errors import TrainingStopped
from lowtune.runs import RunDir
from tests.conftest import LEARNABLE_REWARD, adapter, lowtune, train_stopped_and_resumed

OVERRIDES = [
    "model.name=tiny-random",
    "data.n_train=96",
    "train.max_steps=10",
    "train.per_device_train_batch_size=4",
    "train.save_steps=4",
    "train.logging_steps=1",
    "train.learning_rate=1e-3",
    "eval.task=null",
    "output.quiet=true",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs = tmp_path_factory.mktemp("whole") / "runs"
    done = lowtune("train", "sft", *OVERRIDES, f"output.dir={runs}")
    assert done.returncode == 0, done.stdout + done.stderr
    return runs / "sft"


@pytest.mark.parametrize(
    "signal, code, partial", [("SIGKILL", -9, False), ("SIGKILL", -9, True), ("SIGTERM", 143, False)]
)
def test_stopped_run_resumes_to_the_same_adapter(tmp_path, uninterrupted, signal, code, partial):
    runs = tmp_path / "runs"
    stopped = lowtune("train", "sft", *OVERRIDES, f"output.dir={runs}", stop_at=6, signal=signal)
    assert stopped.returncode == code, stopped.stdout + stopped.stderr
    run = runs / "sft"
    if partial:  # killed while writing the next checkpoint: weights written, trainer_state.json cut short
        import shutil

        shutil.copytree(run / "checkpoints" / "checkpoint-4", run / "checkpoints" / "checkpoint-8")
        (run / "checkpoints" / "checkpoint-8" / "trainer_state.json").write_text('{"global_step": 8, "log_hi')
    assert not (run / "adapter").exists() and not (run / "summary.json").exists()
    checkpoints = sorted((p.name for p in (run / "checkpoints").glob("checkpoint-*")), key=lambda n: int(n[11:]))
    if signal == "SIGTERM":  # a checkpoint at the step it arrived, and the exact resume command
        assert "checkpoint-6" in checkpoints
        assert "SIGTERM at step 6" in stopped.stdout and f"lowtune train --resume {run}" in stopped.stdout
    else:  # killed outright: the last scheduled checkpoint survives (and a half-written one is passed over)
        assert checkpoints[-1] == ("checkpoint-8" if partial else "checkpoint-4")

    resumed = lowtune("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (
        f"resuming {run} from {run / 'checkpoints' / 'checkpoint-'}{6 if signal == 'SIGTERM' else 4}" in resumed.stdout
    )
    ours, whole = adapter(run), adapter(uninterrupted)
    assert ours.keys() == whole.keys()
    for key in whole:
        torch.testing.assert_close(ours[key], whole[key], rtol=1e-4, atol=1e-6)
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == list(range(1, 11))  # each step's loss once, in order
    assert json.loads((run / "summary.json").read_text())["steps"] == 10


def test_resume_latest_run_by_recipe_name(tmp_path):
    runs = tmp_path / "runs"
    stopped = lowtune("train", "sft", *OVERRIDES, f"output.dir={runs}", stop_at=5, signal="SIGTERM")
    assert stopped.returncode == 143
    resumed = lowtune("train", "sft", "--resume", *OVERRIDES, f"output.dir={runs}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (runs / "sft" / "summary.json").is_file() and not (runs / "sft-2").exists()


def test_resume_errors(tmp_path):
    done = lowtune("train", "--resume", str(tmp_path))
    assert done.returncode == 2 and "not a run directory" in done.stdout
    done = lowtune("train", "sft", "--resume", f"output.dir={tmp_path}")
    assert done.returncode == 2 and "has a checkpoint to resume from" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    compute_loss = SFTTrainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        if self.state.global_step >= 5:  # from step 6 on
            loss = loss * float("nan")
        return loss

    monkeypatch.setattr(SFTTrainer, "compute_loss", poisoned)
    recipe = load_recipe(None, [*OVERRIDES, f"output.dir={tmp_path / 'runs'}"])
    with pytest.raises(TrainingStopped) as e:
        recipes.train(recipe)
    run = tmp_path / "runs" / "sft"
    assert "not finite after step 6" in str(e.value) or "loss is nan at step 6" in str(e.value)
    assert f"the last checkpoint is {run / 'checkpoints' / 'checkpoint-4'}" in str(e.value)
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-4"]
    base = AutoModelForCausalLM.from_pretrained(
        json.loads((run / "checkpoints" / "checkpoint-4" / "adapter_config.json").read_text())[
            "base_model_name_or_path"
        ]
    )
    model = PeftModel.from_pretrained(base, str(run / "checkpoints" / "checkpoint-4"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_out_of_memory_says_what_to_lower(tmp_path, monkeypatch):
    from trl import SFTTrainer

    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "compute_loss", out_of_memory)
    with pytest.raises(TrainingStopped) as e:
        recipes.train(load_recipe(None, [*OVERRIDES, f"output.dir={tmp_path / 'runs'}"]))
    message = str(e.value)
    assert "out of GPU memory at step 0" in message
    assert "train.per_device_train_batch_size (now 4" in message and "model.gradient_checkpointing=true" in message


def test_a_crash_while_saving_the_adapter_leaves_no_half_written_adapter(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    replace = os.replace

    def crash(src, dst):  # the final rename of the adapter fails; every other write works
        if Path(dst).name == "adapter":
            raise OSError("disk full")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        recipes.train(load_recipe(None, [*OVERRIDES, f"output.dir={tmp_path / 'runs'}"]))
    run = tmp_path / "runs" / "sft"
    assert not (run / "adapter").exists()
    monkeypatch.undo()
    assert not (run / "summary.json").exists()
    resumed = lowtune("train", "--resume", str(run), "--quiet")  # from the final checkpoint: just saves
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout and (run / "adapter" / "adapter_model.safetensors").is_file()


def test_a_finished_run_resumes_for_more_steps(tmp_path):
    runs = tmp_path / "runs"
    done = lowtune("train", "sft", *OVERRIDES, f"output.dir={runs}")
    assert done.returncode == 0, done.stdout + done.stderr
    first = adapter(runs / "sft")
    more = lowtune("train", "--resume", str(runs / "sft"), "train.max_steps=12", "--quiet")
    assert more.returncode == 0, more.stdout + more.stderr
    assert json.loads((runs / "sft" / "summary.json").read_text())["steps"] == 12
    later = adapter(runs / "sft")
    assert any(not torch.equal(first[k], later[k]) for k in first)  # the adapter was replaced by the longer run
    assert sorted(p.name for p in (runs / "sft").iterdir() if p.name.startswith(".adapter")) == []


PPO = [
    "method=ppo",
    "model.name=tiny-random",
    "data.n_train=64",
    "train.max_steps=10",
    "train.per_device_train_batch_size=4",
    "train.num_mini_batches=2",
    "train.num_ppo_epochs=2",
    "train.max_new_tokens=8",
    "train.save_steps=4",
    "train.logging_steps=1",
    "train.learning_rate=1e-3",
    "eval.task=null",
    "output.quiet=true",
]


@pytest.mark.parametrize("signal, code, checkpoint", [("SIGKILL", -9, 4), ("SIGTERM", 143, 6)])
def test_stopped_ppo_run_resumes_to_the_same_policy_and_value(tmp_path, signal, code, checkpoint):
    """A rollout spans 4 optimizer steps: checkpoint-4 starts a new one, checkpoint-6 (SIGTERM) is mid-rollout
    and carries the rollout it trains on, so either way the resumed run matches the uninterrupted one."""
    whole = lowtune("train", "ppo", *PPO[1:], f"output.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    stopped = lowtune("train", "ppo", *PPO[1:], f"output.dir={tmp_path / 'runs'}", stop_at=6, signal=signal)
    assert stopped.returncode == code, stopped.stdout + stopped.stderr
    run = tmp_path / "runs" / "ppo"
    assert RunDir(run).last_checkpoint().name == f"checkpoint-{checkpoint}"
    resumed = lowtune("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for part in ("adapter_model.safetensors", "value/adapter_model.safetensors", "value/value_head.safetensors"):
        ours, want = (
            load_file(str(run / "adapter" / part)),
            load_file(str(tmp_path / "whole" / "ppo" / "adapter" / part)),
        )
        assert ours.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(ours[key], want[key], rtol=1e-4, atol=1e-6)
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == list(range(1, 11))


SMALL = ["model.name=tiny-random", "train.max_steps=6", "train.per_device_train_batch_size=4", "train.save_steps=2",
         "train.logging_steps=1", "train.learning_rate=1e-3", "eval.task=null", "output.quiet=true"]  # fmt: skip


@pytest.mark.parametrize("method", ["reward", "dpo", "grpo"])
def test_every_trl_method_resumes_after_sigterm(tmp_path, separable_pairs, method):
    """SFT and PPO are checked above in depth; the other methods share fit() and must resume as well."""
    extra = {
        "reward": [f"data.source={separable_pairs(tmp_path / 'pairs.jsonl', 48)}", "data.data_dir=null",
                   "data.heldout=8"],
        "dpo": ["data.n_train=48"],
        "grpo": ["data.n_train=48", "data.system_prompt=null", "train.num_generations=4",
                 "train.max_completion_length=8"],
    }[method]  # fmt: skip
    prelude = LEARNABLE_REWARD if method == "grpo" else ""
    run, _ = train_stopped_and_resumed(tmp_path, ["train", method, *SMALL, *extra], prelude)  # the shipped recipe
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    if method == "grpo":  # the learnable reward was the one trained on, before and after the stop
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logs if "rewards/low_token_share/mean" in r] == list(range(1, 7))
