"""PPO (RLHF): lowtune's own trainer (`lowtune.rl`) on one (4-bit) base carrying every model PPO needs.

The policy LoRA adapter is trained against a score from a reward adapter (`rewards.model`, a run of
`lowtune train reward` on the same base), from rule rewards (`rewards.accuracy` / `format` /
`length`, as for GRPO), or both added. The value adapter is trained beside it; the reference is the
base with adapters disabled, so no second copy of the model is ever loaded. The run's adapter/ is the
policy (merge, export and generate take it as any other run's); adapter/value/ holds the critic.
"""

from __future__ import annotations

from lowtune import data, dist, models, rewards, runs, training, ui
from lowtune.config import Recipe
from lowtune.errors import LowtuneError
from lowtune.evaluate import heldout_accuracy, heldout_before
from lowtune.placement import Placement
from lowtune.results import BeforeAfter, RunSummary
from lowtune.runs import RunDir

# Sized for the builtin model on a CPU (benchmarks/ppo.py -> results/ppo_arithmetic.json): 16 responses per
# rollout, 2 passes in minibatches of 8 = 4 optimizer steps per rollout.
TRAIN_DEFAULTS = dict(
    learning_rate=2e-4,
    per_device_train_batch_size=8,
    num_mini_batches=2,
    num_ppo_epochs=2,
    logging_steps=4,
    include_num_input_tokens_seen="no",  # the trainer counts the tokens it generates and trains on itself
)


def make_trainer(recipe: Recipe, args, policy, tokenizer, dataset, reward_dir=None):
    """lowtune's PPOTrainer on `policy` (an ActorCritic) with the recipe's rewards (the trainer `lowtune plan`
    traces, too)."""
    from lowtune.rl import PPOTrainer
    from lowtune.scoring import conversation_encoder

    cfg = recipe.rewards
    length_max = cfg.length_max or args.max_new_tokens
    funcs, weights = rewards.weighted_rewards(cfg.accuracy, cfg.format, cfg.length, length_max)
    _require_a_score(recipe, reward_dir)
    _require_columns(funcs, dataset)
    stop = sorted({tokenizer.convert_tokens_to_ids(models.end_of_turn_token(tokenizer)), tokenizer.eos_token_id})
    encode = conversation_encoder(reward_dir, tokenizer) if reward_dir else None
    return PPOTrainer(
        model=policy, args=args, train_dataset=dataset, processing_class=tokenizer, reward_funcs=funcs,
        reward_weights=weights, reward_encode=encode, stop_token_ids=stop,
    )  # fmt: skip


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    from lowtune.rl import ActorCritic

    dist.refuse("PPO (lowtune train ppo)")
    reward_dir = _reward_adapter(recipe)
    _require_a_score(recipe, reward_dir)  # before the model loads: a wrong recipe fails in a second
    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say, placement=placement)
    dataset = data.load(recipe.data, kind="prompt", system_prompt=recipe.system_prompt())
    ui.say(f"{len(dataset)} prompts from {recipe.data.source}")
    policy = ActorCritic.build(model, reward_dir)

    before = heldout_before(model, tokenizer, recipe)

    if recipe.lora.dropout > 0:
        ui.say(
            f"lora.dropout={recipe.lora.dropout} is off in PPO (as in TRL's PPO trainer): the rollout's log-probs "
            "and the loss's must come from the same policy"
        )
    trainer = make_trainer(recipe, args, policy, tokenizer, dataset, reward_dir)
    funcs, weights = trainer.reward_funcs, trainer.reward_weights
    fit = training.fit(trainer, run_dir, recipe, placement, lambda: policy_accuracy(policy, tokenizer, recipe))
    after = policy_accuracy(policy, tokenizer, recipe)
    details = {
        "reward_model": str(reward_dir) if reward_dir else None,
        "rewards": dict(zip([f.__name__ for f in funcs], weights, strict=True)),
        "rollout_size": args.rollout_size,
    }
    return RunSummary("ppo", recipe.model.name, len(dataset), fit, details, heldout=BeforeAfter(before, after))


def policy_accuracy(policy, tokenizer, recipe: Recipe):
    """Held-out accuracy of the policy adapter (mid-training too: the trainer activates what it needs)."""
    from lowtune.rl.model import POLICY

    policy.activate(POLICY)
    return heldout_accuracy(policy.peft, tokenizer, recipe)


def _reward_adapter(recipe: Recipe):
    """The reward adapter directory named by `rewards.model`, checked to share the policy's base."""
    if recipe.rewards.model is None:
        return None
    from lowtune.rl.model import require_reward_adapter

    adapter = runs.find_adapter(recipe.rewards.model)
    require_reward_adapter(adapter)
    base = runs.base_model(adapter)
    same = base == recipe.model.name or (
        recipe.model.name not in models.builtin.BUILTINS and base == models.resolve_path(recipe.model.name)
    )
    if not same:
        raise LowtuneError(
            f"rewards.model: {adapter} was trained on {base}, the policy is {recipe.model.name}; "
            "PPO keeps every adapter on one base, so train the reward model on the policy's base"
        )
    return adapter


def _require_a_score(recipe: Recipe, reward_dir) -> None:
    cfg = recipe.rewards
    if reward_dir is None and not (cfg.accuracy or cfg.format or cfg.length):
        raise LowtuneError(
            "rewards: PPO needs a score: set rewards.model to a reward run, or give a rule reward a weight"
        )


def _require_columns(funcs, dataset) -> None:
    needs_answer = [f.__name__ for f in funcs if f.__name__ in ("accuracy_reward", "length_reward")]
    if needs_answer and "answer" not in dataset.column_names:
        raise LowtuneError(
            f"rewards: {', '.join(needs_answer)} compare with an `answer` column, which "
            f"{dataset.column_names} lacks; set rewards.accuracy=0 (and rewards.length=0) or use data with answers"
        )
