"""PPO (RLHF): lowtune's own trainer (`lowtune.rl`) on one (4-bit) base carrying every model PPO needs.

The policy LoRA adapter is trained against a score from a reward adapter (`rewards.model`, a run of
`lowtune train reward` on the same base), from rule rewards (`rewards.accuracy` / `format` /
`length`, as for GRPO), or both added. The value adapter is trained beside it; the reference is the
base with adapters disabled, so no second copy of the model is ever loaded. The run's adapter/ is the
policy (merge, export and generate take it as any other run's); adapter/value/ holds the critic.
"""

from __future__ import annotations

from typing import Any

from lowtune import data, dist, models, ui
from lowtune.config import Recipe
from lowtune.errors import LowtuneError
from lowtune.recipes import fit, heldout_accuracy, trl_args
from lowtune.recipes.grpo import reward_functions
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


def run(recipe: Recipe, run_dir: RunDir) -> dict[str, Any]:
    from lowtune.rl import ActorCritic, PPOTrainer

    dist.refuse("PPO (lowtune train ppo)")
    reward_dir = _reward_adapter(recipe)
    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say)
    dataset = data.load(recipe.data, kind="prompt", system_prompt=recipe.system_prompt())
    ui.say(f"{len(dataset)} prompts from {recipe.data.source}")
    policy = ActorCritic.build(model, reward_dir)

    with model.disable_adapter():
        before = heldout_accuracy(model, tokenizer, recipe, before=True)

    args = trl_args(recipe, run_dir)
    funcs, weights = reward_functions(recipe, args.max_new_tokens)
    if not funcs and reward_dir is None:
        raise LowtuneError(
            "rewards: PPO needs a score: set rewards.model to a reward run, or give a rule reward a weight"
        )
    _require_columns(funcs, dataset)
    if recipe.lora.dropout > 0:
        ui.say(
            f"lora.dropout={recipe.lora.dropout} is off in PPO (as in TRL's PPO trainer): the rollout's log-probs "
            "and the loss's must come from the same policy"
        )
    stop = sorted({tokenizer.convert_tokens_to_ids(models.end_of_turn_token(tokenizer)), tokenizer.eos_token_id})
    trainer = PPOTrainer(
        model=policy, args=args, train_dataset=dataset, processing_class=tokenizer, reward_funcs=funcs,
        reward_weights=weights, reward_encode=_reward_encoder(reward_dir, tokenizer), stop_token_ids=stop,
    )  # fmt: skip
    summary = fit(trainer, run_dir, recipe, lambda: policy_accuracy(policy, tokenizer, recipe))
    after = policy_accuracy(policy, tokenizer, recipe)
    return {
        "method": "ppo",
        "model": recipe.model.name,
        "rows": len(dataset),
        "reward_model": str(reward_dir) if reward_dir else None,
        "rewards": dict(zip([f.__name__ for f in funcs], weights, strict=True)),
        "rollout_size": args.rollout_size,
        **summary,
        "eval_before": before,
        "eval_after": after,
    }


def policy_accuracy(policy, tokenizer, recipe: Recipe):
    """Held-out accuracy of the policy adapter (mid-training too: the trainer activates what it needs)."""
    from lowtune.rl.model import POLICY

    policy.activate(POLICY)
    return heldout_accuracy(policy.peft, tokenizer, recipe)


def _reward_adapter(recipe: Recipe):
    """The reward adapter directory named by `rewards.model`, checked to share the policy's base."""
    if recipe.rewards.model is None:
        return None
    adapter = models.find_adapter(recipe.rewards.model)
    reward_recipe = models.run_recipe(adapter)
    base = reward_recipe.model.name if reward_recipe else models.adapter_base(adapter)
    same = base == recipe.model.name or (
        recipe.model.name not in models.builtin.BUILTINS and base == models.resolve_path(recipe.model.name)
    )
    if not same:
        raise LowtuneError(
            f"rewards.model: {adapter} was trained on {base}, the policy is {recipe.model.name}; "
            "PPO keeps every adapter on one base, so train the reward model on the policy's base"
        )
    return adapter


def _reward_encoder(reward_dir, tokenizer):
    """conversation -> token ids as the reward model read them in training (its system prompt, its max_length)."""
    if reward_dir is None:
        return None
    from lowtune.recipes.reward import TRAIN_DEFAULTS as REWARD_DEFAULTS
    from lowtune.recipes.reward import encode

    reward_recipe = models.run_recipe(reward_dir)
    system = reward_recipe.system_prompt() if reward_recipe else None
    max_length = reward_recipe.train.get("max_length", REWARD_DEFAULTS["max_length"]) if reward_recipe else None

    def encode_conversation(conversation: list[dict]) -> list[int]:
        messages = [m for m in conversation if m["role"] != "system"]
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        return encode(tokenizer, messages, max_length)[0]

    return encode_conversation


def _require_columns(funcs, dataset) -> None:
    needs_answer = [f.__name__ for f in funcs if f.__name__ in ("accuracy_reward", "length_reward")]
    if needs_answer and "answer" not in dataset.column_names:
        raise LowtuneError(
            f"rewards: {', '.join(needs_answer)} compare with an `answer` column, which "
            f"{dataset.column_names} lacks; set rewards.accuracy=0 (and rewards.length=0) or use data with answers"
        )
