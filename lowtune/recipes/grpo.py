"""GRPO reasoning training with verifiable rewards: TRL's GRPOTrainer on a (4-bit) base + LoRA.

For each prompt the trainer samples a group of completions, scores each with the weighted rewards
(`rewards.*` in the recipe: accuracy, format, length), and moves the policy toward the completions
that beat their group's mean (DeepSeekMath, Shao et al. 2024). TRL's loss variants pass through
`train.loss_type` (grpo, dr_grpo, dapo, ...). Each reward is logged separately by TRL
(`rewards/<name>/mean` in metrics.jsonl), as is the mean completion length.
"""

from __future__ import annotations

from typing import Any

from lowtune import data, models, rewards, ui
from lowtune.config import Recipe
from lowtune.errors import LowtuneError
from lowtune.recipes import fit, heldout_accuracy, logprob_kernel, trl_args
from lowtune.runs import RunDir

# Defaults measured to learn on the builtin model in minutes (README, benchmarks/grpo_arithmetic.py).
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
    """The rule reward functions with non-zero weight, and their weights (both empty when every weight is 0)."""
    cfg = recipe.rewards
    length_max = cfg.length_max or max_completion_length

    def length_reward(completions, answer, completion_ids=None, **kwargs):
        return rewards.length_reward(completions, answer, completion_ids, max_length=length_max)

    chosen = [
        (rewards.accuracy_reward, cfg.accuracy),
        (rewards.format_reward, cfg.format),
        (length_reward, cfg.length),
    ]
    chosen = [(f, w) for f, w in chosen if w != 0]
    return [f for f, _ in chosen], [w for _, w in chosen]


def run(recipe: Recipe, run_dir: RunDir) -> dict[str, Any]:
    from trl import GRPOTrainer

    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say)
    dataset = data.load(recipe.data, kind="prompt", system_prompt=recipe.system_prompt())
    ui.say(f"{len(dataset)} prompts from {recipe.data.source}")

    with model.disable_adapter():
        before = heldout_accuracy(model, tokenizer, recipe, before=True)

    args = trl_args(recipe, run_dir)
    funcs, weights = reward_functions(recipe, args.max_completion_length)
    if not funcs:
        raise LowtuneError("rewards: every weight is 0; give accuracy, format or length a weight")
    args.reward_weights = weights
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tokenizer)
    with logprob_kernel(recipe) as kernel:
        summary = fit(trainer, run_dir, recipe, lambda: heldout_accuracy(model, tokenizer, recipe))

    after = heldout_accuracy(model, tokenizer, recipe)
    return {
        "method": "grpo",
        "model": recipe.model.name,
        "rows": len(dataset),
        "logprob_kernel": kernel,
        "rewards": dict(zip([f.__name__ for f in funcs], weights, strict=True)),
        **summary,
        "eval_before": before,
        "eval_after": after,
    }
