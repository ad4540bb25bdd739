"""PPO: the math alone (GAE, whitening, KL, where the score lands), then the trainer on tiny-random."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lowtune import recipes
from lowtune.config import load_recipe
from lowtune.errors import LowtuneError
from lowtune.rl import gae, kl_penalty, whiten
from lowtune.rl.core import explained_variance, policy_loss, token_rewards, value_loss
from lowtune.rl.ppo import response_mask

# ---------------------------------------------------------------- GAE


def test_gae_hand_worked():
    # gamma 0.9, lam 0.5:  t=2: delta = 2 - 0.2 = 1.8, A = 1.8
    #   t=1: delta = 0 + 0.9 * 0.2 - 1.0 = -0.82, A = -0.82 + 0.45 * 1.8 = -0.01
    #   t=0: delta = 1 + 0.9 * 1.0 - 0.5 = 1.4,   A = 1.4 + 0.45 * -0.01 = 1.3955
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 0.2]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[1.3955, -0.01, 1.8]]))
    torch.testing.assert_close(returns, torch.tensor([[1.8955, 0.99, 2.0]]))


def slow_gae(rewards, values, mask, gamma, lam):
    """Per row: the masked-in steps in order, GAE by the textbook recursion, written back."""
    advantages = torch.zeros_like(values)
    for b in range(values.shape[0]):
        steps = [t for t in range(values.shape[1]) if mask[b, t]]
        running = 0.0
        for i in reversed(range(len(steps))):
            t = steps[i]
            next_value = values[b, steps[i + 1]].item() if i + 1 < len(steps) else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            advantages[b, t] = running
    return advantages, (advantages + values) * mask


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0)])
def test_gae_matches_a_slow_reference_with_padding_and_single_tokens(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(6, 9, generator=g), torch.randn(6, 9, generator=g)
    mask = torch.zeros(6, 9)
    mask[0, :] = 1  # full length
    mask[1, :4] = 1  # right padding
    mask[2, 5:] = 1  # left padding
    mask[3, 0] = 1  # a single-token response
    mask[4, 8] = 1  # a single token at the end
    mask[5, [1, 2, 5, 6]] = 1  # a gap in the middle
    got_adv, got_ret = gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = slow_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(got_adv, want_adv)
    torch.testing.assert_close(got_ret, want_ret)
    assert (got_adv[mask == 0] == 0).all() and (got_ret[mask == 0] == 0).all()
    # the single-token responses: A = r - V, return = r
    torch.testing.assert_close(got_ret[3, 0], rewards[3, 0])
    torch.testing.assert_close(got_adv[4, 8], rewards[4, 8] - values[4, 8])


def test_gae_ignores_what_lies_under_the_padding():
    rewards, values = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.float)
    noisy_r = rewards + 100 * (1 - mask)
    noisy_v = values - 50 * (1 - mask)
    for a, b in zip(gae(rewards, values, mask), gae(noisy_r, noisy_v, mask), strict=True):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- whitening, KL, losses


def test_whiten_masked_entries_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -99.0, -99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = whiten(x, mask)
    valid = out[mask.bool()]
    assert abs(valid.mean().item()) < 1e-6
    assert abs(valid.var().item() - 1.0) < 1e-4  # unbiased, as computed
    assert (out[~mask.bool()] == 0).all()
    want = (torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) - 3.0) / torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).std()
    torch.testing.assert_close(valid, want)
    kept_mean = whiten(x, mask, shift_mean=False)[mask.bool()]
    torch.testing.assert_close(kept_mean.mean(), torch.tensor(3.0))


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), logp - ref)
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), 0.5 * (logp - ref) ** 2)
    r = torch.exp(ref - logp)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), r - 1 - torch.log(r))
    assert (kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    assert (kl_penalty(logp, logp, "k1") == 0).all() and (kl_penalty(logp, logp, "k3") == 0).all()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


def test_kl_estimators_hand_worked():
    # log ratios 0.5 and -1: k2 = r^2 / 2 -> 0.125, 0.5; k3 = e^-r - 1 + r -> e^-0.5 - 0.5 = 0.10653, e - 2 = 0.71828
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.125, 0.5]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([0.1065307, 0.7182818]))


def test_whiten_hand_worked():
    # masked entries 0 and 4: mean 2, unbiased variance (4 + 4) / 1 = 8, std 2.8284
    x, mask = torch.tensor([[0.0, 4.0, 50.0]]), torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-0.7071068, 0.7071068, 0.0]]))
    # shift_mean=False (whiten_rewards): the scale changes, the mean stays
    torch.testing.assert_close(whiten(x, mask, shift_mean=False), torch.tensor([[1.2928932, 2.7071068, 0.0]]))


def test_adaptive_kl_hand_worked():
    from lowtune.rl.core import AdaptiveKL

    control = AdaptiveKL(0.1, target=6.0, horizon=10000)
    control.update(kl=9.0, n=64)  # KL / target - 1 = 0.5, clipped to 0.2: beta *= 1 + 0.2 * 64 / 10000
    assert control.beta == pytest.approx(0.1 * 1.00128)
    control.update(kl=6.6, n=100)  # error 0.1: beta *= 1.001
    assert control.beta == pytest.approx(0.1 * 1.00128 * 1.001)
    control.update(kl=0.0, n=100)  # error -1, clipped to -0.2: beta *= 0.998
    assert control.beta == pytest.approx(0.1 * 1.00128 * 1.001 * 0.998)
    control.update(kl=6.0, n=1000)  # on target: unchanged
    assert control.beta == pytest.approx(0.1 * 1.00128 * 1.001 * 0.998)
    fixed = AdaptiveKL(0.1, target=None)
    fixed.update(kl=100.0, n=1000)
    assert fixed.beta == 0.1


def test_score_lands_on_the_eos_token_not_after_it():
    eos, pad = 7, 0
    responses = torch.tensor([[3, 4, eos, pad, pad], [3, 4, 5, 6, 2], [eos, pad, pad, pad, pad]])
    mask = response_mask(responses, [eos])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    kl = torch.full((3, 5), 0.5)
    rewards = token_rewards(torch.tensor([2.0, -1.0, 3.0]), kl, mask.float(), beta=0.1)
    assert rewards.tolist()[0] == pytest.approx([-0.05, -0.05, 1.95, 0, 0])  # on the EOS, index 2
    assert rewards.tolist()[1] == pytest.approx([-0.05] * 4 + [-1.05])  # cut off: on its last token
    assert rewards.tolist()[2] == pytest.approx([2.95, 0, 0, 0, 0])


def test_clipped_losses():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.9]]))  # ratios 1.5 (clipped to 1.2) and 0.9
    adv = torch.tensor([[1.0, 1.0]])
    loss, clip_fraction, approx_kl = policy_loss(new, old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.9) / 2)
    assert clip_fraction.item() == pytest.approx(0.5)
    assert approx_kl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.9) ** 2) / 2)
    vloss, vclip = value_loss(torch.tensor([[1.0, 0.1]]), torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), mask, 0.2)
    # first: clipped value 0.2 is farther from the return 1.0 -> (0.8)^2; second: (0.1)^2 both ways
    assert vloss.item() == pytest.approx(0.5 * (0.64 + 0.01) / 2)
    assert vclip.item() == pytest.approx(0.5)
    assert explained_variance(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)) == 1.0


# ---------------------------------------------------------------- the trainer on tiny-random

PPO = [
    "method=ppo",
    "model.name=tiny-random",
    "data.n_train=64",
    "train.per_device_train_batch_size=4",
    "train.num_mini_batches=2",
    "train.num_ppo_epochs=2",
    "train.max_new_tokens=8",
    "train.logging_steps=1",
    "eval.task=null",
    "output.quiet=true",
]


def make_trainer(tmp_path, overrides=(), reward_funcs=None, reward_dir=None, model=None):
    """A PPOTrainer as the ppo recipe builds it, with reward functions passed in directly."""
    from lowtune import data, models
    from lowtune.rl import ActorCritic, PPOTrainer
    from lowtune.runs import RunDir
    from lowtune.scoring import conversation_encoder

    recipe = load_recipe(None, [*PPO, f"output.dir={tmp_path}", *overrides])
    torch.manual_seed(0)  # the LoRA init
    if model is None:
        peft_model, tokenizer = models.load(recipe.model, recipe.lora)
        policy = ActorCritic.build(peft_model, reward_dir)
    else:
        policy, tokenizer = model, models.load_tokenizer(models.resolve_path(recipe.model.name))
    dataset = data.load(recipe.data, kind="prompt", system_prompt=None)
    run = RunDir(tmp_path / "run")
    return PPOTrainer(
        model=policy, args=recipes.trl_args(recipe, run), train_dataset=dataset, processing_class=tokenizer,
        reward_funcs=reward_funcs, reward_encode=conversation_encoder(reward_dir, tokenizer) if reward_dir else None,
        stop_token_ids=[tokenizer.eos_token_id],
    )  # fmt: skip


def share_of_tokens_below(token_id):
    """Reward: the share of a response's tokens whose id is below `token_id` (a chosen set of tokens)."""

    def reward(completions, completion_ids, **kwargs):
        return [sum(t < token_id for t in ids) / max(len(ids), 1) for ids in completion_ids]

    return reward


def test_kl_is_zero_at_the_first_rollout(tmp_path):
    trainer = make_trainer(tmp_path, reward_funcs=[share_of_tokens_below(96)])
    rows = [trainer.train_dataset[i] for i in range(8)]
    rollout = trainer._make_rollout(rows)
    assert trainer._metrics["kl"] == [0.0]
    ref = trainer._logprobs("reference", rollout, int(rollout["prompt_width"]))
    torch.testing.assert_close(ref, rollout["logp"], rtol=0, atol=0)
    assert rollout["mask"].sum() > 0 and (rollout["logp"][rollout["mask"] == 0] == 0).all()


def perturb_policy(model, scale=0.1, seed=0):
    """Random values in the policy adapter's B (zero at init), so the policy is no longer the reference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.peft.named_parameters():
            if "lora_B.default" in name:
                param.copy_(torch.randn(param.shape, generator=g) * scale)


def full_softmax_logprobs(model, rollout, temperature):
    """Per-token log-probs of a rollout's responses, from the full vocabulary's logits: log_softmax(logits / T)."""
    width = int(rollout["prompt_width"])
    with torch.no_grad():
        logits = model(
            input_ids=rollout["input_ids"], attention_mask=rollout["attention_mask"],
            position_ids=rollout["position_ids"],
        ).logits  # fmt: skip
    logp = torch.log_softmax(logits[:, width - 1 : -1].float() / temperature, dim=-1)
    return logp.gather(-1, rollout["responses"][..., None])[..., 0] * rollout["mask"]


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_against_the_base_model_with_a_perturbed_policy(tmp_path, tiny_path, estimator):
    """With B != 0 the policy differs from the reference: the logged KL and the KL penalty are what the full
    softmax of the policy and of the plain base model (a separate copy, no adapter) give."""
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(tmp_path, [f"train.kl_estimator={estimator}"], [share_of_tokens_below(96)])
    perturb_policy(trainer.model)
    rows = [trainer.train_dataset[i] for i in range(8)]
    rollout = trainer._make_rollout(rows)
    mask, temperature, beta = rollout["mask"].float(), trainer.args.temperature, trainer.args.kl_coef
    trainer.model.activate("default")  # the rollout ends on the value adapter
    policy = full_softmax_logprobs(trainer.model.peft, rollout, temperature)
    reference = full_softmax_logprobs(AutoModelForCausalLM.from_pretrained(str(tiny_path)).eval(), rollout, temperature)
    torch.testing.assert_close(rollout["logp"], policy, rtol=1e-4, atol=1e-5)
    log_ratio = (policy - reference) * mask
    kl = log_ratio.sum(1).mean().item()
    assert kl > 0.5  # far from the reference
    assert trainer._metrics["kl"] == [pytest.approx(kl, rel=1e-4)]
    penalty = {"k1": log_ratio, "k2": 0.5 * log_ratio**2, "k3": torch.exp(-log_ratio) - 1 + log_ratio}[estimator]
    want = -beta * (penalty * mask).sum(1).mean().item()
    assert trainer._metrics["non_score_reward"] == [pytest.approx(want, rel=1e-4)]


def test_adaptive_kl_coefficient_moves_toward_the_target(tmp_path):
    """kl_target: beta shrinks while the KL is below the target and grows while it is above (by the clipped
    20% x n / horizon per rollout of n responses), and the next rollout's KL penalty uses the new beta."""
    adaptive = ["train.kl_target=1.0", "train.kl_horizon=100"]
    reward = share_of_tokens_below(96)
    below = make_trainer(tmp_path / "below", adaptive, [reward])  # B = 0: KL 0 < target
    rows = [below.train_dataset[i] for i in range(8)]
    below._make_rollout(rows)
    assert below._metrics["kl"] == [0.0]
    assert below.kl_control.beta == pytest.approx(0.05 * (1 - 0.2 * 8 / 100))

    above = make_trainer(tmp_path / "above", adaptive, [reward])
    perturb_policy(above.model)  # KL of a few nats > 1.2 x target
    above._make_rollout(rows)
    beta = 0.05 * (1 + 0.2 * 8 / 100)
    assert above._metrics["kl"][0] > 1.2 and above.kl_control.beta == pytest.approx(beta)
    above._make_rollout(rows)
    metrics = above._metrics
    assert metrics["beta"] == [0.05, pytest.approx(beta)]
    assert metrics["non_score_reward"][1] == pytest.approx(-beta * metrics["kl"][1], rel=1e-5)  # k1: the same sum
    assert above.kl_control.beta == pytest.approx(beta * (1 + 0.2 * 8 / 100))

    fixed = make_trainer(tmp_path / "fixed", reward_funcs=[reward])  # no kl_target: beta stays
    perturb_policy(fixed.model)
    fixed._make_rollout(rows)
    assert fixed.kl_control.beta == 0.05


def test_whiten_rewards_whitens_what_gae_gets(tmp_path, monkeypatch):
    from lowtune.rl import core

    seen = []
    real_token_rewards, real_gae = core.token_rewards, core.gae

    def token_rewards(*args, **kwargs):
        seen.append(real_token_rewards(*args, **kwargs))
        return seen[-1]

    def gae(rewards, values, mask, *args, **kwargs):
        seen.append((rewards.clone(), mask))
        return real_gae(rewards, values, mask, *args, **kwargs)

    monkeypatch.setattr(core, "token_rewards", token_rewards)
    monkeypatch.setattr(core, "gae", gae)
    trainer = make_trainer(tmp_path, reward_funcs=[share_of_tokens_below(96)])
    perturb_policy(trainer.model)
    rows = [trainer.train_dataset[i] for i in range(8)]
    trainer._make_rollout(rows)
    raw, (got, mask) = seen
    torch.testing.assert_close(got, raw, rtol=0, atol=0)  # off (the default): the rewards as they are
    trainer.args.whiten_rewards = True
    seen.clear()
    trainer._make_rollout(rows)
    raw, (got, mask) = seen
    valid = raw[mask > 0]
    mean, std = valid.mean(), valid.std()  # unbiased, over the response tokens of the whole rollout
    want = ((raw - mean) / std + mean) * mask  # unit variance, the mean kept (shift_mean=False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, raw, atol=1e-3)


def test_mean_reward_rises_with_a_rule_reward(tmp_path):
    trainer = make_trainer(
        tmp_path,
        [
            "train.max_steps=64",
            "train.per_device_train_batch_size=8",
            "train.learning_rate=3e-3",
            "train.kl_coef=0.0",
            "train.missing_eos_penalty=0",
        ],
        [share_of_tokens_below(96)],
    )
    trainer.train()
    scores = [r["score"] for r in trainer.state.log_history if "score" in r]
    assert len(scores) == 16  # a rollout every 4 optimizer steps
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.1, scores
    logged = trainer.state.log_history[0]
    for key in ("kl", "entropy", "clip_fraction", "approx_kl", "value_loss", "explained_variance", "response_length"):
        assert key in logged


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    from tests.conftest import write_separable_pairs

    tmp = tmp_path_factory.mktemp("reward")
    data = write_separable_pairs(tmp / "pairs.jsonl", 64)
    recipe = load_recipe(
        None,
        ["method=reward", "model.name=tiny-random", f"data.source={data}", "data.heldout=8",
         "train.max_steps=6", "train.per_device_train_batch_size=8", "train.learning_rate=1e-3",
         "eval.task=null", f"output.dir={tmp / 'runs'}", "output.quiet=true"],
    )  # fmt: skip
    run, _ = recipes.train(recipe)
    return run.path


def test_reward_adapter_scores_match_plain_peft_and_never_move(tmp_path, reward_run):
    from lowtune.scoring import RewardModel

    trainer = make_trainer(
        tmp_path, ["train.max_steps=8", "train.learning_rate=1e-2"], reward_dir=reward_run / "adapter"
    )
    conversations = [
        [{"role": "user", "content": "tell me about stone"}, {"role": "assistant", "content": "thank you, happy"}],
        [{"role": "user", "content": "what is 2 + 2?"}, {"role": "assistant", "content": "no. go away"}],
    ]
    sequences = [trainer.reward_encode(c) for c in conversations]
    before = trainer.reward_model_scores(sequences)
    plain = RewardModel.load(reward_run).score(conversations)  # the reward adapter on its own SEQ_CLS model
    torch.testing.assert_close(before, torch.tensor(plain), rtol=1e-4, atol=1e-5)
    policy_before = {k: v.clone() for k, v in trainer.model.peft.state_dict().items() if ".default." in k}
    trainer.train()
    policy_after = {k: v for k, v in trainer.model.peft.state_dict().items() if ".default." in k}
    assert any(not torch.equal(policy_before[k], policy_after[k]) for k in policy_before)  # the policy trained
    torch.testing.assert_close(trainer.reward_model_scores(sequences), before, rtol=0, atol=0)
    assert any("rewards/reward_model" in r for r in trainer.state.log_history)


def test_value_adapter_starts_as_the_reward_model(tmp_path, reward_run):
    from lowtune.rl.model import REWARD, VALUE

    trainer = make_trainer(tmp_path, reward_dir=reward_run / "adapter")
    model = trainer.model
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    torch.testing.assert_close(
        model.values(model.hidden(VALUE, ids, mask)), model.scores(model.hidden(REWARD, ids, mask))
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(".reward." in n or "score_head" in n for n in trainable)
    assert any(".value." in n for n in trainable) and any(".default." in n for n in trainable)
    model.activate("default")
    with model.peft.disable_adapter():  # as the recipe's evaluation before training does
        pass
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".value." in n)  # PEFT froze them
    rebuilt = make_trainer(tmp_path, reward_dir=reward_run / "adapter", model=model)
    optimized = {id(p) for group in rebuilt.create_optimizer().param_groups for p in group["params"]}
    assert optimized == {id(p) for n, p in model.named_parameters() if n in trainable}


def test_ppo_recipe_saves_a_policy_adapter_plain_peft_loads(tmp_path, tiny_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lowtune import models

    recipe = load_recipe(None, [*PPO, f"output.dir={tmp_path / 'runs'}", "train.max_steps=4", "train.save_steps=4"])
    run, summary = recipes.train(recipe)
    assert summary["steps"] == 4 and summary["tokens"] > 0 and summary["rollout_size"] == 8
    adapter = run.path / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert (adapter / "value" / "value_head.safetensors").is_file()
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_path)), str(adapter)).eval()
    ours, _, _ = models.load_for_inference(str(run.path))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, ours(ids).logits)
        with plain.disable_adapter():
            assert not torch.allclose(plain(ids).logits, ours(ids).logits)  # the adapter is not a no-op
    assert (run.path / "checkpoints" / "checkpoint-4" / "rollout.safetensors").is_file()
    from lowtune.cli import main

    assert main(["merge", str(run.path), "--out", str(tmp_path / "merged"), "--dtype", "fp32"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, plain(ids).logits, rtol=1e-4, atol=1e-4)


def test_ppo_recipe_errors(tmp_path, reward_run, monkeypatch, tiny_path):
    import shutil

    from lowtune import models

    other = shutil.copytree(tiny_path, tmp_path / "other-base")  # a base the reward model was not trained on

    sft = ["model.name=tiny-random", "data.n_train=16", "train.max_steps=1", "eval.task=null", "output.quiet=true"]
    sft_run, _ = recipes.train(load_recipe(None, [*sft, f"output.dir={tmp_path}"]))

    def no_model(*args, **kwargs):
        raise AssertionError("the recipe's mistake should have been found before the model loads")

    monkeypatch.setattr(models, "load", no_model)  # each mistake is found before a model loads
    with pytest.raises(LowtuneError, match="PPO needs a score"):
        recipes.train(load_recipe(None, [*PPO, f"output.dir={tmp_path}", "rewards.accuracy=0"]))
    with pytest.raises(LowtuneError, match="train the reward model on the policy's base"):
        recipes.train(load_recipe(None, [*PPO, f"output.dir={tmp_path}", f"rewards.model={reward_run}",
                                         f"model.name={other}"]))  # fmt: skip
    with pytest.raises(LowtuneError, match="kl_estimator"):
        recipes.train(load_recipe(None, [*PPO, f"output.dir={tmp_path}", "train.kl_estimator=k9"]))
    with pytest.raises(LowtuneError, match="unknown key train.num_ppo_epoch"):
        load_recipe(None, [*PPO, "train.num_ppo_epoch=2"])
    with pytest.raises(LowtuneError, match="not a reward model adapter"):
        recipes.train(load_recipe(None, [*PPO, f"output.dir={tmp_path}", f"rewards.model={sft_run.path}"]))


@pytest.mark.parametrize("setting", ["model.quantization=nf4", "model.gradient_checkpointing=true"])
def test_ppo_on_a_4bit_base_and_with_gradient_checkpointing(tmp_path, setting):
    recipe = load_recipe(None, [*PPO, f"output.dir={tmp_path}", "train.max_steps=4", setting])
    run, summary = recipes.train(recipe)
    assert summary["steps"] == 4 and (run.path / "adapter" / "adapter_model.safetensors").is_file()
    if "nf4" in setting:
        assert summary["quantization"] == "nf4"
    # it trained: the policy's B and the value head start at zero and have moved
    policy = load_file(str(run.path / "adapter" / "adapter_model.safetensors"))
    assert [k for k in policy if "lora_B" in k] and all(v.abs().max() > 0 for k, v in policy.items() if "lora_B" in k)
    head = load_file(str(run.path / "adapter" / "value" / "value_head.safetensors"))
    assert any(v.abs().max() > 0 for v in head.values())


def rewards_with_a_gap(value):
    """Reward: 1.0 per response, but `value` (None, NaN, ...) for the fourth."""

    def gappy_reward(completions, **kwargs):
        return [value if i == 3 else 1.0 for i in range(len(completions))]

    return gappy_reward


@pytest.mark.parametrize("value", [None, float("nan"), "high"])
def test_a_reward_that_is_not_a_number_is_an_error_naming_function_and_row(tmp_path, value):
    trainer = make_trainer(tmp_path, reward_funcs=[share_of_tokens_below(96), rewards_with_a_gap(value)])
    rows = [trainer.train_dataset[i] for i in range(8)]
    prompt = rows[3]["prompt"][-1]["content"]
    with pytest.raises(LowtuneError, match="reward function gappy_reward returned .* for response 3 of 8") as e:
        trainer._make_rollout(rows)
    assert repr(prompt[:20])[:-1] in str(e.value)  # the start of that row's prompt
    assert trainer._metrics["score"] == []  # nothing of the rollout was logged


def test_each_rollouts_first_ratio_is_exactly_one_with_lora_dropout(tmp_path, monkeypatch):
    """Rollout (eval mode) and loss (train mode) score the same policy: at the first minibatch of each rollout the
    ratio is 1 and the values are the rollout's. The second rollout is the test: at the first, LoRA's B is still
    zero, so dropout on its input cannot change anything yet."""
    from lowtune.rl import core

    ratios, values = [], []
    real_policy_loss, real_value_loss = core.policy_loss, core.value_loss

    def policy_loss(logp, old_logp, advantages, mask, clip):
        ratios.append(torch.exp(logp - old_logp)[mask > 0].detach())
        return real_policy_loss(logp, old_logp, advantages, mask, clip)

    def value_loss(new, old, returns, mask, clip):
        values.append((new[mask > 0].detach(), old[mask > 0]))
        return real_value_loss(new, old, returns, mask, clip)

    monkeypatch.setattr(core, "policy_loss", policy_loss)
    monkeypatch.setattr(core, "value_loss", value_loss)
    trainer = make_trainer(
        tmp_path, ["lora.dropout=0.5", "train.max_steps=5", "train.learning_rate=1e-2"], [share_of_tokens_below(96)]
    )
    assert trainer.args.micro_steps_per_rollout == 4  # so the fifth step is the second rollout's first
    trainer.train()
    assert len(ratios) == len(values) == 5
    for step in (0, 4):
        assert ratios[step].numel() > 0 and (ratios[step] == 1).all(), (step, ratios[step])
        torch.testing.assert_close(*values[step], rtol=0, atol=0)
    assert not (ratios[1] == 1).all()  # after an update the policy has moved: the check can fail
