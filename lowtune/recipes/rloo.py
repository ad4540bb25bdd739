"""RLOO with verifiable rewards: TRL's RLOOTrainer on a (4-bit) base + LoRA.

REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): for each prompt the
trainer samples `num_generations` completions and scores each with the weighted rule rewards (`rewards.*`, as
GRPO's); a completion's advantage is its reward minus the mean reward of the *other* completions of its prompt,
not divided by their spread. With `train.beta` > 0 TRL subtracts beta x the sequence's summed log-ratio to
the reference (the base with the adapter off) from the reward. The prompts are GRPO's (`data.load`, kind
`prompt`), and the per-token log-probs go through the same kernel (`model.logprob_kernel`).
"""

from __future__ import annotations

from lowtune import rewards, training
from lowtune.config import Recipe
from lowtune.placement import Placement
from lowtune.results import RunSummary
from lowtune.runs import RunDir

# GRPO's CPU settings (benchmarks/grpo_arithmetic.py measured them for GRPO; not measured for RLOO yet). TRL's
# lr 1e-6 is sized for full fine-tuning, and its beta 0.05 costs a reference forward pass per step.
TRAIN_DEFAULTS = dict(learning_rate=2e-4, num_generations=8, max_completion_length=64, per_device_train_batch_size=16,
                      temperature=0.8, beta=0.0, logging_steps=1)  # fmt: skip


def make_trainer(recipe: Recipe, args, model, tokenizer, dataset):
    """TRL's RLOOTrainer on the adapted model with the recipe's weighted rule rewards."""
    from trl import RLOOTrainer

    funcs, args.reward_weights = rewards.recipe_rewards(recipe.rewards, args.max_completion_length)
    trainer = RLOOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tokenizer)
    if args.beta == 0.0 and "ref" in getattr(trainer.model, "peft_config", {}):
        # TRL 1.16's RLOO copies an adapted model's adapter into a frozen "ref" adapter whatever beta is (its GRPO
        # only when beta != 0); with beta 0 nothing reads it, and it would be saved beside the trained adapter.
        trainer.model.delete_adapter("ref")
    return trainer


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    return training.fit_on_prompts("rloo", recipe, run_dir, placement, args, make_trainer)
