import json

import pytest

from lowtune import recipes
from lowtune.config import REASONING_PROMPT, load_recipe
from lowtune.errors import LowtuneError
from tests.conftest import low_token_share


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
    for name in ("accuracy_reward", "format_reward", "length_reward", "think_tokens"):
        assert all(f"rewards/{name}/mean" in r for r in steps)
    assert all("completions/mean_length" in r for r in steps)
    # the think length is logged (the format reward is on), not rewarded: weight 0, so not among the rewards
    assert summary["rewards"] == {"accuracy_reward": 1.0, "format_reward": 0.5, "length_reward": 0.25}
    assert (run.adapter / "adapter_model.safetensors").is_file()
    assert summary["eval_before"]["n"] == 4 and summary["eval_after"]["n"] == 4


def test_grpo_raises_a_reward_tiny_random_can_earn(tmp_path, monkeypatch):
    from lowtune.recipes import grpo

    monkeypatch.setattr(grpo, "reward_functions", lambda recipe, max_completion_length: ([low_token_share], [1.0]))
    recipe = grpo_recipe(
        tmp_path, "data.n_train=64", "train.max_steps=24", "train.per_device_train_batch_size=8",
        "train.learning_rate=1e-2", "eval.task=null",
    )  # fmt: skip
    run, summary = recipes.train(recipe)
    logs = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    rewards = [r["rewards/low_token_share/mean"] for r in logs if "rewards/low_token_share/mean" in r]
    assert len(rewards) == 24 and summary["rewards"] == {"low_token_share": 1.0}
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.2, rewards


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


def test_lowtune_kernel_inside_trls_fused_head_gives_trls_loss_and_gradients(tiny_path, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    import lowtune.kernels
    from lowtune.kernels.trl import patched

    calls = []
    real = lowtune.kernels.token_logprobs
    monkeypatch.setattr(lowtune.kernels, "token_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    batch = tokenizer(["What is 12 + 34? 46", "Hi"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)

    def run(kernel):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_path)
        add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))  # as GRPOTrainer does
        with patched(kernel) as used:
            out = model(**batch, labels=labels, fused_lm_head=True)
            (out.loss + out.entropy.sum()).backward()
        assert used == kernel
        return out, model.model.layers[0].self_attn.q_proj.weight.grad

    ours, our_grad = run("lowtune")
    assert calls  # the patched head really went through lowtune's kernel
    n = len(calls)
    theirs, their_grad = run("trl")
    assert len(calls) == n
    torch.testing.assert_close(ours.log_probs, theirs.log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.entropy, theirs.entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-6, rtol=1e-4)
    assert (ours.log_probs[labels[:, 1:] == -100] == 0).all()


def test_auto_kernel_is_lowtune_on_cpu_and_trl_is_restored(tmp_path):
    import torch
    import trl.trainer.utils as trl_utils

    from lowtune.kernels.trl import patched
    from lowtune.placement import Placement

    original = trl_utils._ChunkedLogProbFunction
    with patched(Placement.resolve(grpo_recipe(tmp_path).model).logprob_kernel) as used:
        if not torch.cuda.is_available():
            assert used == "lowtune" and trl_utils._ChunkedLogProbFunction is not original
    assert trl_utils._ChunkedLogProbFunction is original


def test_resolve_logprob_kernel():
    from lowtune.placement import resolve_logprob_kernel

    assert resolve_logprob_kernel("auto", "cpu") == "lowtune"  # measured ahead there (benchmarks/results)
    assert resolve_logprob_kernel("auto", "cuda") == "trl"  # not measured on a GPU
    for choice in ("lowtune", "trl"):
        for device in ("cpu", "cuda"):
            assert resolve_logprob_kernel(choice, device) == choice


def built_trainer(tmp_path, monkeypatch, *overrides):
    """The GRPO trainer a run of the (tiny-random) recipe builds, before it trains."""
    from lowtune import training

    built = []

    def capture(trainer, *args):
        built.append(trainer)
        raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(training, "fit", capture)
    with pytest.raises(KeyboardInterrupt):
        recipes.train(grpo_recipe(tmp_path, "eval.task=null", *overrides))
    return built[0]


def test_completions_without_signal_leave_the_loss_pass_and_the_gradient_as_it_is(tmp_path, monkeypatch):
    import torch
    from trl import GRPOTrainer

    trainer = built_trainer(tmp_path, monkeypatch)
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    completion_mask = torch.ones(6, 7, dtype=torch.long)
    completion_mask[1, 4:] = completion_mask[2, 5:] = 0
    inputs = {
        "prompt_ids": torch.randint(vocab, (6, 5), generator=g),
        "prompt_mask": torch.ones(6, 5, dtype=torch.long),
        "completion_ids": torch.randint(vocab, (6, 7), generator=g),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([0.5, 0.0, -1.2, 0.0, 0.0, 0.7]),
        "num_items_in_batch": completion_mask.sum(),
    }
    rows = []  # the rows of every loss pass
    forward = trainer._get_per_token_logps_and_entropies

    def counted(model, input_ids, *args, **kwargs):
        rows.append(len(input_ids))
        return forward(model, input_ids, *args, **kwargs)

    trainer._get_per_token_logps_and_entropies = counted

    def gradient(compute_loss):
        model.zero_grad()
        loss = compute_loss(model, dict(inputs))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    full_loss, full = gradient(lambda m, x: GRPOTrainer.compute_loss(trainer, m, x))  # TRL's own, every row
    skip_loss, skipped = gradient(trainer.compute_loss)
    assert rows == [6, 3]  # the three completions with a non-zero advantage, alone
    torch.testing.assert_close(skip_loss, full_loss, atol=1e-7, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in full)
    for ours, theirs in zip(skipped, full, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-8, rtol=1e-5)
    assert trainer._metrics["train"]["completions/skipped"] == [0.5]

    inputs["advantages"] = torch.zeros(6)  # no signal at all: one row still runs, its gradient is 0
    _, nothing = gradient(trainer.compute_loss)
    assert rows[-1] == 1 and all((g == 0).all() for g in nothing)

    from lowtune.recipes import grpo

    assert grpo.skips_exactly(trainer)  # the recipe's settings: beta 0, dapo
    for setting, value in (("beta", 0.04), ("loss_type", "grpo"), ("loss_type", "dr_grpo"), ("loss_type", "bnpo")):
        original = getattr(trainer, setting)
        setattr(trainer, setting, value)  # a KL term, or a normalizer that counts the rows present
        assert not grpo.skips_exactly(trainer), setting
        setattr(trainer, setting, original)


@pytest.mark.parametrize("setting, folds", [(None, True), ("false", False)])
def test_grpo_samples_with_the_adapter_folded_on_cpu_unless_turned_off(tmp_path, monkeypatch, setting, folds):
    import contextlib

    from peft.tuners.lora import LoraLayer

    from lowtune import models

    folded, fold = [], models.folded_lora

    @contextlib.contextmanager
    def spy(model, enabled=None):
        with fold(model, enabled):  # folded: the LoRA layers are off, their adapter in the weights
            folded.append(next(m for m in model.modules() if isinstance(m, LoraLayer)).disable_adapters)
            yield model

    monkeypatch.setattr(models, "folded_lora", spy)
    overrides = [f"train.folded_generation={setting}"] if setting else []
    run, summary = recipes.train(grpo_recipe(tmp_path, "eval.task=null", *overrides))
    assert summary["steps"] == 2 and folded == [folds] * 2  # one generation batch a step
