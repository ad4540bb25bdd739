"""GRPO reasoning training with verifiable rewards: TRL's GRPOTrainer on a (4-bit) base + LoRA.

For each prompt the trainer samples a group of completions, scores each with the weighted rewards
(`rewards.*` in the recipe: accuracy, format, length), and moves the policy toward the completions
that beat their group's mean (DeepSeekMath, Shao et al. 2024). TRL's loss variants pass through
`train.loss_type` (grpo, dr_grpo, dapo, ...). Each reward is logged separately by TRL
(`rewards/<name>/mean` in metrics.jsonl), as is the mean completion length.
"""

from __future__ import annotations

from lowtune import data, models, rewards, training, ui
from lowtune.config import Recipe
from lowtune.errors import LowtuneError
from lowtune.evaluate import heldout_accuracy
from lowtune.kernels.trl import patched
from lowtune.placement import Placement
from lowtune.results import BeforeAfter, RunSummary
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
    """The recipe's rule rewards with non-zero weight, and their weights (`rewards.*`)."""
    cfg = recipe.rewards
    return rewards.weighted_rewards(cfg.accuracy, cfg.format, cfg.length, cfg.length_max or max_completion_length)


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    from trl import GRPOTrainer

    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say, placement=placement)
    dataset = data.load(recipe.data, kind="prompt", system_prompt=recipe.system_prompt())
    ui.say(f"{len(dataset)} prompts from {recipe.data.source}")

    with model.disable_adapter():
        before = heldout_accuracy(model, tokenizer, recipe, before=True)

    funcs, weights = reward_functions(recipe, args.max_completion_length)
    if not funcs:
        raise LowtuneError("rewards: every weight is 0; give accuracy, format or length a weight")
    args.reward_weights = weights
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tokenizer)
    with patched(placement.logprob_kernel) as kernel:
        fit = training.fit(trainer, run_dir, recipe, placement, lambda: heldout_accuracy(model, tokenizer, recipe))

    after = heldout_accuracy(model, tokenizer, recipe)
    details = {"logprob_kernel": kernel, "rewards": dict(zip([f.__name__ for f in funcs], weights, strict=True))}
    return RunSummary("grpo", recipe.model.name, len(dataset), fit, details, heldout=BeforeAfter(before, after))
