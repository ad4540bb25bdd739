"""GRPO reasoning training with verifiable rewards: TRL's GRPOTrainer on a (4-bit) base + LoRA.

For each prompt the trainer samples a group of completions, scores each with the weighted rewards
(`rewards.*` in the recipe: accuracy, format, length), and moves the policy toward the completions
that beat their group's mean (DeepSeekMath, Shao et al. 2024). TRL's loss variants pass through
`train.loss_type` (grpo, dr_grpo, dapo, ...). Each reward is logged separately by TRL
(`rewards/<name>/mean` in metrics.jsonl), as is the mean completion length; with the format reward on, so is the
mean length of the `<think>` part (`rewards/think_tokens/mean`, a measurement at weight 0).

A group whose completions all score the same carries no signal: every advantage in it is 0. Where that makes their
loss terms exactly 0 and leaves the normalizer alone (`skips_exactly`), the loss pass leaves those completions out:
the same gradient for less compute and memory (`train.skip_zero_advantage`, on by default; metrics.jsonl:
`completions/skipped`, the share left out; TRL's `entropy` and clip ratios are then measured on the completions that
carry signal).
"""

from __future__ import annotations

import functools

from lowtune import models, rewards, training
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


# The per-completion tensors of a text GRPO batch (TRL 1.16's `_generate_and_score_completions`), and the one
# scalar beside them; a batch with anything else (a vision model's inputs) is passed whole.
ROW_KEYS = frozenset({"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "tool_mask",
                      "old_per_token_logps", "sampling_per_token_logps", "importance_sampling_ratio",
                      "ref_per_token_logps"})  # fmt: skip


def skips_exactly(trainer) -> bool:
    """Whether leaving the completions whose advantage is 0 out of the loss pass leaves the gradient as it is.

    With beta 0 there is no KL term, so such a completion's loss terms are its advantage times a ratio: 0. The
    `dapo` and `cispo` losses divide the sum over tokens by the generation batch's token count
    (`num_items_in_batch`, counted before the pass), so the rows present do not change it; `grpo`, `bnpo` and
    `dr_grpo` divide by the rows or tokens present, and an entropy mask, entropy bonus or router loss reads every
    row: none of those is skipped."""
    return (
        trainer.beta == 0.0
        and trainer.loss_type in ("dapo", "cispo")
        and trainer.top_entropy_quantile == 1.0
        and not trainer._entropy_bonus_enabled
        and not trainer.aux_loss_enabled
    )


def with_signal(inputs: dict) -> dict:
    """The batch without the completions whose advantage is 0; at least one row stays, so that a batch without
    signal still runs its (zero-gradient) pass as TRL's would."""
    if not set(inputs) <= ROW_KEYS | {"num_items_in_batch"}:
        return inputs
    advantages = inputs["advantages"]
    keep = (advantages != 0).reshape(len(advantages), -1).any(dim=1)
    if keep.all():
        return inputs
    if not keep.any():
        keep[0] = True
    return {k: v if k == "num_items_in_batch" else v[keep] for k, v in inputs.items()}


@functools.cache
def trainer_class():
    from trl import GRPOTrainer

    class SkippingGRPOTrainer(GRPOTrainer):
        """TRL's GRPOTrainer whose loss pass leaves out the completions without signal where that is exact, and
        which samples with the adapter folded into the weights where it can (`train.folded_generation`)."""

        def _generate_single_turn(self, *args, **kwargs):
            with models.folded_lora(self.model, getattr(self.args, "folded_generation", False)):
                return super()._generate_single_turn(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if getattr(self.args, "skip_zero_advantage", False) and model.training and skips_exactly(self):
                kept = with_signal(inputs)
                share = 1 - len(kept["advantages"]) / len(inputs["advantages"])
                self._metrics["train"]["completions/skipped"].append(share)
                inputs = kept
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return SkippingGRPOTrainer


def make_trainer(recipe: Recipe, args, model, tokenizer, dataset):
    """TRL's GRPOTrainer with the recipe's weighted rule rewards, skipping completions without signal (the
    trainer `lowtune plan` traces, too)."""
    funcs, args.reward_weights = reward_functions(recipe, args.max_completion_length)
    if recipe.rewards.format:  # the think length of every step, logged (weight 0: not rewarded)
        funcs, args.reward_weights = [*funcs, rewards.think_tokens(tokenizer)], [*args.reward_weights, 0.0]
    trainer = trainer_class()
    return trainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tokenizer)


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    return training.fit_on_prompts("grpo", recipe, run_dir, placement, args, make_trainer)
