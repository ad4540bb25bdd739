"""Pipelines (a recipe's `stages`) on tiny-random: one LoRA adapter trained by each stage in turn, each stage in a run
directory of its own, resumed inside the stage that stopped; the rejection-sampling stage keeps exactly the samples the
rewards accept; `--smoke` makes every stage a smoke run; a mistake inside a stage names the stage."""

import json
import os
import signal
import time
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from lowtune import evaluate, recipes, rewards, runs, training
from lowtune.cli import main
from lowtune.config import REASONING_PROMPT, load_recipe
from lowtune.errors import LowtuneError
from lowtune.recipes import rejection_sampling
from lowtune.runs import RunDir
from tests.conftest import check_plain_peft_adapter, low_token_share

SFT_THEN_GRPO = """\
model:
  name: tiny-random
data:
  n_train: 32
train:
  logging_steps: 1
  learning_rate: 1.0e-2
eval:
  n: 2
  max_new_tokens: 4
output:
  quiet: true
stages:
  - method: sft
    train:
      max_steps: 2
      per_device_train_batch_size: 4
  - method: grpo
    train:
      max_steps: 1
      per_device_train_batch_size: 4
      num_generations: 4
      max_completion_length: 8
"""


def write(tmp_path, text, name="pipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def lora_weights(model) -> dict[str, torch.Tensor]:
    """The adapter's weights as its safetensors file names them (PEFT drops the adapter's name when it saves)."""
    return {n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


FIT = training.fit


def record_fits(monkeypatch, callback=None) -> dict:
    """training.fit records, per run directory it trains in (by name, in the order trained), the LoRA weights the
    trainer starts from and the checkpoint it resumes from; `callback(run)`: a TrainerCallback to add there, or
    None."""
    started = {}

    def fit_and_record(trainer, run, *args):
        started[run.path.name] = (lora_weights(trainer.model), run.resume_from)
        if callback is not None and (extra := callback(run)) is not None:
            trainer.add_callback(extra)
        return FIT(trainer, run, *args)

    monkeypatch.setattr(training, "fit", fit_and_record)
    return started


def test_a_later_stage_trains_the_adapter_the_stage_before_left(tmp_path, monkeypatch):
    monkeypatch.setattr(rewards, "recipe_rewards", lambda cfg, n: ([low_token_share], [1.0]))  # tiny-random learns it
    started = record_fits(monkeypatch)
    recipe = load_recipe(write(tmp_path, SFT_THEN_GRPO), [f"output.dir={tmp_path / 'runs'}"])
    run, summary = recipes.train(recipe)

    first, second = run.stage(1, "sft"), run.stage(2, "grpo")
    trained_first = load_file(str(first.adapter / "adapter_model.safetensors"))
    initial, _ = started["2-grpo"]
    assert initial.keys() == trained_first.keys()
    for name, weight in trained_first.items():  # the very tensors stage 1 saved, loaded trainable
        assert torch.equal(initial[name], weight), name
    assert any(torch.count_nonzero(w) for n, w in trained_first.items() if "lora_B" in n)  # stage 1 trained them
    final = load_file(str(run.adapter / "adapter_model.safetensors"))
    assert final.keys() == trained_first.keys()
    assert any(not torch.equal(final[n], w) for n, w in trained_first.items())  # and stage 2 trained them further
    last = load_file(str(second.adapter / "adapter_model.safetensors"))
    assert all(torch.equal(final[n], last[n]) for n in final)  # the pipeline's adapter is the last stage's
    check_plain_peft_adapter(run.adapter)

    for stage in (first, second):  # each stage is a run directory of its own
        assert all(p.is_file() for p in (stage.config, stage.metrics, stage.summary))
    stage_config = yaml.safe_load(second.config.read_text())
    assert stage_config["method"] == "grpo" and stage_config["lora"]["start_from"] == str(first.adapter)
    assert stage_config["eval"]["before"] is False  # its starting point is what stage 1 scored after
    assert runs.read_recipe(run.adapter).method == "grpo"  # generate, merge and eval read the last stage's recipe

    written = json.loads(run.summary.read_text())
    assert written == summary.to_dict() and written["method"] == "pipeline"
    stages = [(s["stage"], s["method"], s["dir"]) for s in written["stages"]]
    assert stages == [(1, "sft", "stages/1-sft"), (2, "grpo", "stages/2-grpo")]
    assert [s["steps"] for s in written["stages"]] == [2, 1] and written["steps"] == 3
    assert written["stages"][1]["rewards"] == {"low_token_share": 1.0}
    stage_summaries = [json.loads(s.summary.read_text()) for s in (first, second)]
    curve = [stage_summaries[0]["eval_before"], *(s["eval_after"] for s in stage_summaries)]
    assert [(p["after"], p["accuracy"]) for p in written["heldout_curve"]] == [
        (after, point["accuracy"]) for after, point in zip(("base", "1-sft", "2-grpo"), curve, strict=True)
    ]
    assert stage_summaries[1]["eval_before"] is None


class Stop(TrainerCallback):
    """Sends this process SIGTERM at the end of step `step` (lowtune's guard checkpoints and stops)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


SFT_THEN_SFT = """\
model:
  name: tiny-random
data:
  n_train: 32
train:
  logging_steps: 1
  learning_rate: 1.0e-2
  per_device_train_batch_size: 4
eval:
  task: null
stages:
  - method: sft
    train:
      max_steps: 2
  - method: sft
    data:
      operations: ["-"]
    train:
      max_steps: 4
      save_steps: 2
"""


def test_sigterm_in_stage_2_then_resume_continues_inside_stage_2(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, SFT_THEN_SFT)
    assert main(["train", str(path), "--quiet", f"output.dir={tmp_path / 'whole'}"]) == 0
    (whole,) = (tmp_path / "whole").iterdir()

    record_fits(monkeypatch, lambda run: Stop(2) if run.path.name == "2-sft" else None)
    assert main(["train", str(path), "--quiet", f"output.dir={tmp_path / 'runs'}"]) == 143
    (run,) = (tmp_path / "runs").iterdir()
    first, second = RunDir(run).stage(1, "sft"), RunDir(run).stage(2, "sft")
    assert first.summary.is_file() and second.last_checkpoint().name == "checkpoint-2"
    assert not second.adapter.exists() and not (run / "adapter").exists() and not (run / "summary.json").exists()
    first_summary = first.summary.read_text()

    started = record_fits(monkeypatch)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert list(started) == ["2-sft"]  # stage 1 is not trained again
    assert started["2-sft"][1] == str(second.checkpoints / "checkpoint-2")  # stage 2 goes on from its checkpoint
    assert "stage 1/2 (sft): finished" in out and f"resuming from {second.checkpoints / 'checkpoint-2'}" in out
    assert first.summary.read_text() == first_summary
    logs = [json.loads(line) for line in second.metrics.read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4]  # each step once: continued, not rerun
    for name in ("adapter", "stages/2-sft/adapter"):
        ours, want = (load_file(str(d / name / "adapter_model.safetensors")) for d in (run, whole))
        assert ours.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(ours[key], want[key], rtol=1e-4, atol=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert [s["steps"] for s in summary["stages"]] == [2, 4]


def test_a_stage_that_puts_a_fresh_adapter_on_the_base_trains_on_the_pipeline_so_far_merged(tmp_path, separable_pairs):
    """DPO takes its reference by switching its adapter off: it cannot continue the SFT adapter, so the SFT adapter is
    merged into the base first (the reference is the SFT model) and DPO trains a fresh adapter on that base."""
    pairs = separable_pairs(tmp_path / "pairs.jsonl", 8)
    text = (
        "model:\n  name: tiny-random\ntrain:\n  max_steps: 1\n  per_device_train_batch_size: 4\neval:\n  task: null\n"
        "output:\n  quiet: true\nstages:\n  - method: sft\n    data:\n      n_train: 8\n    train:\n"
        f"      learning_rate: 1.0e-2\n  - method: dpo\n    data:\n      source: {pairs}\n"
    )
    run, summary = recipes.train(load_recipe(write(tmp_path, text), [f"output.dir={tmp_path / 'runs'}"]))
    dpo = run.stage(2, "dpo")
    config = yaml.safe_load(dpo.config.read_text())
    assert config["model"]["name"] == str(dpo.merged_base.resolve()) and config["lora"]["start_from"] is None
    assert (dpo.merged_base / "model.safetensors").is_file()
    assert [s["method"] for s in summary["stages"]] == ["sft", "dpo"]
    assert runs.read_recipe(run.adapter).model.name == config["model"]["name"]  # generate loads it on the merged base
    check_plain_peft_adapter(run.adapter)


def right_wrong_and_malformed(model, tokenizer, prompts, max_new_tokens, **kwargs):
    """Stands in for sampling: per prompt (a conversation asking "What is A + B?"), a long right reply in the format,
    a short right one, a wrong one in the format and a right one out of it."""
    assert kwargs["do_sample"] and kwargs["temperature"] == 0.7 and max_new_tokens == 24
    replies = []
    for messages in prompts:
        a, b = map(int, messages[-1]["content"].removeprefix("What is ").removesuffix("?").split(" + "))
        s = a + b
        replies += [f"<think>{a} + {b} = {s}. Checked twice: {s}.</think><answer>{s}</answer>",
                    f"<think>{a} + {b} = {s}.</think><answer>{s}</answer>",
                    f"<think>{a} + {b} = {s + 1}.</think><answer>{s + 1}</answer>",
                    f"The answer is {s}."][: kwargs["num_return_sequences"]]  # fmt: skip
    return replies


REJECTION = ["method=rejection_sampling", "model.name=tiny-random", "data.n_train=3", "rewards.format=1",
             "train.num_generations=4", "train.temperature=0.7", "train.max_completion_length=24", "train.max_steps=2",
             "train.per_device_train_batch_size=2", "eval.task=null", "output.quiet=true"]  # fmt: skip


def test_rejection_sampling_keeps_exactly_the_right_well_formed_samples_and_trains_on_them(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "generate", right_wrong_and_malformed)
    run, summary = recipes.train(load_recipe(None, [*REJECTION, f"output.dir={tmp_path}"]))
    rows = [json.loads(line) for line in run.kept.read_text().splitlines()]
    assert len(rows) == 3 and summary["rows"] == 3  # keep: shortest, one per prompt
    for row in rows:
        system, user, reply = row["messages"]
        assert system == {"role": "system", "content": REASONING_PROMPT} and user["role"] == "user"
        assert reply == {"role": "assistant", "content": f"<think>{user['content'][8:-1]} = {row['answer']}.</think>"
                         f"<answer>{row['answer']}</answer>"}  # fmt: skip
    sampling = {"prompts": 3, "generated": 12, "accepted": 6, "kept": 3, "keep": "shortest",
                "rewards": ["accuracy_reward", "format_reward"]}  # fmt: skip
    assert {k: summary["sampling"][k] for k in sampling} == sampling
    assert summary["method"] == "rejection_sampling" and summary["steps"] == 2
    assert json.loads(run.kept_stats.read_text()) == summary["sampling"]
    assert (run.adapter / "adapter_model.safetensors").is_file()

    # keep: all keeps both right, well-formed samples of each prompt, in the order drawn; format off, the right
    # reply out of the format is accepted too
    recipe = load_recipe(None, [*REJECTION, "train.keep=all", "rewards.format=0"])
    again = RunDir(tmp_path / "all")
    again.path.mkdir()
    stats = rejection_sampling.sample(recipe, again, None, recipes.trl_args(recipe, again))
    replies = [json.loads(line)["messages"][-1]["content"] for line in again.kept.read_text().splitlines()]
    assert stats["accepted"] == stats["kept"] == 9 and len(replies) == 9
    assert [r.startswith("<think>") for r in replies[:3]] == [True, True, False] and "Checked" in replies[0]


def test_rejection_sampling_spends_the_stages_budget_on_sampling_first(tmp_path, monkeypatch):
    """budget.minutes is the stage's whole time: the SFT on the kept samples gets what sampling left, and a budget
    that sampling spent whole stops with what to do, the kept samples saved for --resume."""

    def slow(*args, **kwargs):
        time.sleep(0.6)
        return right_wrong_and_malformed(*args, **kwargs)

    monkeypatch.setattr(evaluate, "generate", slow)
    budgets = []

    def train_sft(recipe, run_dir, placement, args):
        budgets.append(recipe.budget.minutes)
        return SimpleNamespace(method="sft", details={})

    for name, minutes in (("enough", 0.5), ("spent", 0.005)):
        recipe = load_recipe(None, [*REJECTION, f"budget.minutes={minutes}"])
        run = RunDir(tmp_path / name)
        run.path.mkdir()
        if name == "enough":
            rejection_sampling.run(recipe, run, None, recipes.trl_args(recipe, run), train_sft)
            assert 0.5 - 0.05 < budgets[0] <= 0.5 - 0.01  # 0.6 s of sampling = 0.01 min
        else:
            with pytest.raises(LowtuneError, match=r"took 0\.0 min of the stage's budget\.minutes 0\.005, leaving no "
                                                   r"time to train.*reused on --resume"):  # fmt: skip
                rejection_sampling.run(recipe, run, None, recipes.trl_args(recipe, run), train_sft)
            assert len(budgets) == 1 and len(run.kept.read_text().splitlines()) == 3


def test_rejection_sampling_that_keeps_nothing_says_what_to_do_and_leaves_no_run(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "generate", lambda m, t, prompts, n, **kw: ["no idea"] * len(prompts) * 4)
    with pytest.raises(LowtuneError, match=r"kept none of the 12 samples of 3 prompts: no sample passed "
                                           r"accuracy_reward, format_reward\. Draw more"):  # fmt: skip
        recipes.train(load_recipe(None, [*REJECTION, f"output.dir={tmp_path}"]))
    assert list(tmp_path.iterdir()) == []


def test_smoke_runs_every_stage_of_a_pipeline_for_2_steps(tmp_path, capsys, tiny_path):
    runs_dir = tmp_path / "runs"
    small = ["stages.2.train.per_device_train_batch_size=4", "stages.2.train.num_generations=4"]  # tiny-random's pace
    assert (
        main(["train", "sft-grpo", "--smoke", "--quiet", "model.name=tiny-random", f"output.dir={runs_dir}", *small])
        == 0
    )
    out = capsys.readouterr().out
    assert "smoke run: stages.1.train.max_steps=2 stages.1.eval.n=2" in out and "stages.2.train.max_steps=2" in out
    assert "smoke run: the recipe ran end to end (2 + 2 steps)" in out
    (run,) = runs_dir.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["smoke"] is True and [s["steps"] for s in summary["stages"]] == [2, 2]
    for stage in summary["stages"]:
        assert stage["smoke"] is True and stage["eval_after"]["n"] == 2
        config = yaml.safe_load((run / stage["dir"] / "config.yaml").read_text())
        assert config["train"]["max_steps"] == 2 and config["eval"]["n"] == 2
    assert config["train"]["max_completion_length"] == 16 and config["train"]["learning_rate"] == 1e-4  # the stage's


@pytest.mark.parametrize(
    "stage_text, expected",
    [
        ("    train:\n      learnig_rate: 1.0e-3\n", ":7: unknown key stages[2].train.learnig_rate — did you mean "
                                                   "learning_rate?"),
        ("    train:\n      lr: 1.0e-3\n", ":7: unknown key stages[2].train.lr — did you mean learning_rate?"),
        ("    data:\n      digits: 9\n", ":7: stages[2].data.digits must be 1..6, got 9"),
        ("    eval:\n      task: multistp\n", ":7: unknown stages[2].eval.task multistp — did you mean multistep?"),
        ("    lora:\n      r: 4\n", ":6: stages[2].lora: a stage sets method, data, train, rewards, eval, augment, "
                                    "budget; lora is the pipeline's own (set it at the top)"),
    ],
    ids=["typo", "short name", "bad value", "bad choice", "the pipeline's section"],
)  # fmt: skip
def test_a_mistake_inside_a_stage_names_the_stage_and_its_line(tmp_path, stage_text, expected):
    path = write(tmp_path, f"model:\n  name: tiny-random\nstages:\n  - method: sft\n  - method: sft\n{stage_text}")
    with pytest.raises(LowtuneError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}{expected}")


def test_stage_sections_merge_over_the_pipelines_and_overrides_reach_one_stage(tmp_path):
    path = write(tmp_path, SFT_THEN_SFT)
    recipe = load_recipe(path, ["stages.2.train.max_steps=7", "train.warmup_steps=1", "data.n_train=16"])
    first, second = (stage.recipe for stage in recipe.stages)
    assert first.train["max_steps"] == 2 and second.train["max_steps"] == 7  # the stage's own beats the pipeline's
    assert first.train["warmup_steps"] == second.train["warmup_steps"] == 1  # the pipeline's reaches every stage
    assert first.data.operations == ["+"] and second.data.operations == ["-"] and second.data.n_train == 16
    assert first.model is recipe.model and recipe.method == "pipeline"
    reloaded = load_recipe(write(tmp_path, yaml.safe_dump(recipe.to_dict()), "config.yaml"))  # a run's config.yaml
    assert [s.own for s in reloaded.stages] == [s.own for s in recipe.stages]
    assert [s.recipe for s in reloaded.stages] == [s.recipe for s in recipe.stages]
    with pytest.raises(LowtuneError, match=r"unknown key train.num_generations \(stages\[1\] is sft; the pipeline's"):
        load_recipe(path, ["train.num_generations=4"])
    with pytest.raises(LowtuneError, match="a pipeline's stages name their methods; remove the top-level method"):
        load_recipe(path, ["method=sft"])
    with pytest.raises(LowtuneError, match=r"override 'stages.3.train.max_steps=1': 3 is not a stage number \(1 to 2"):
        load_recipe(path, ["stages.3.train.max_steps=1"])
    with pytest.raises(LowtuneError, match="stages\\[2\\].method reward trains a reward model"):
        load_recipe(path, ["stages.2.method=reward"])


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_the_score_before_training_is_the_adapter_a_run_starts_from(tmp_path, monkeypatch, method):
    """With `lora.start_from` the held-out score before training is the adapter's, not the bare base's: summary.json's
    "before" is where the run started (it read the base's 3% when the adapter it continued scored 42%)."""
    adapter_on = []

    def scored(model, tokenizer, problems, *args, **kwargs):
        lora = [m for m in model.modules() if hasattr(m, "lora_A")]
        adapter_on.append(bool(lora) and not any(m.disable_adapters for m in lora))
        return evaluate.EvalResult(accuracy=0.5 if adapter_on[-1] else 0.0, n=len(problems), examples=[("q", "r", 1)])

    monkeypatch.setattr(evaluate, "accuracy", scored)
    extra = ["train.num_generations=4", "train.per_device_train_batch_size=4", "train.max_completion_length=8"]
    common = ["model.name=tiny-random", "train.max_steps=1", "eval.n=2", "output.quiet=true", f"output.dir={tmp_path}",
              *(extra if method == "grpo" else [])]  # fmt: skip
    main(["train", method, *common, "output.name=fresh"])
    fresh = json.loads((tmp_path / "fresh" / "summary.json").read_text())
    assert adapter_on == [False, True] and fresh["eval_before"]["accuracy"] == 0.0
    adapter_on.clear()
    main(["train", method, *common, "output.name=further", f"lora.start_from={tmp_path / 'fresh'}"])
    further = json.loads((tmp_path / "further" / "summary.json").read_text())
    assert adapter_on == [True, True] and further["eval_before"]["accuracy"] == 0.5
