"""GRPO reasoning training with verifiable rewards: TRL's GRPOTrainer on a (4-bit) base + LoRA.

For each prompt the trainer samples a group of completions, scores each with the weighted rewards
(`rewards.*` in the recipe: accuracy, format, length), and moves the policy toward the completions
that beat their group's mean (DeepSeekMath, Shao et al. 2024). TRL's loss variants pass through
`train.loss_type` (grpo, dr_grpo, dapo, ...). Each reward is logged separately by TRL
(`rewards/<name>/mean` in metrics.jsonl), as is the mean completion length; with the format reward on, so is the
mean length of the `<think>` part (`rewards/think_tokens/mean`, a measurement at weight 0).
"""

from __future__ import annotations

from lowtune import rewards, training
from lowtune.config import Recipe
from lowtune.placement import Placement
from lowtune.results import RunSummary
from lowtune.runs import RunDir

# Defaults measured to learn on the builtin model in minutes (benchmarks/grpo_arithmetic.py).
# TRL's lr 1e-6 and 512-token budget are sized for full fine-tuning of large models: LoRA takes a
# larger step, and short completions keep a CPU step in seconds.
TRAIN_DEFAULTS = dict(
    learning_rate=2e-4,
    num_generations=8,
    max_completion_length=64,
    per_device_train_batch_size=16,
    temperature=0.8,
    beta=0.0,
    logging_steps=1,
)


def reward_functions(recipe: Recipe, max_completion_length: int) -> tuple[list, list[float]]:
    """The recipe's rule rewards with non-zero weight, and their weights (`rewards.*`); an error when there are
    none."""
    return rewards.recipe_rewards(recipe.rewards, max_completion_length)


def make_trainer(recipe: Recipe, args, model, tokenizer, dataset):
    """TRL's GRPOTrainer with the recipe's weighted rule rewards (the trainer `lowtune plan` traces, too)."""
    from trl import GRPOTrainer

    funcs, args.reward_weights = reward_functions(recipe, args.max_completion_length)
    if recipe.rewards.format:  # the think length of every step, logged (weight 0: not rewarded)
        funcs, args.reward_weights = [*funcs, rewards.think_tokens(tokenizer)], [*args.reward_weights, 0.0]
    return GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tokenizer)


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    return training.fit_on_prompts("grpo", recipe, run_dir, placement, args, make_trainer)
