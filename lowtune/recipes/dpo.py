"""Direct preference optimization: TRL's DPOTrainer on a (4-bit) base + LoRA.

DPO (Rafailov et al. 2023) trains the policy directly on pairs: the loss raises
beta * [(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))]. The
reference is the base with the adapter switched off, inside the same model: lowtune hands TRL
the bare base plus a LoRA config, so no second copy of the weights exists. TRL's loss variants
pass through `train.loss_type` (sigmoid, ipo, hinge, ..., or a list mixed by `train.loss_weights`;
`[sigmoid, sft]` adds the chosen reply's NLL, RPO-style, Pang et al. 2024), and
`train.precompute_ref_log_probs: true` scores the reference once before training. Per-token
log-probs come from TRL's chunked LM head (its metrics need mean logits and top-1 flags, which
lowtune's kernel does not compute).

Evaluation: implicit-reward preference accuracy on held-out pairs (the policy/reference log-ratio
of the chosen reply above the rejected one's), and greedy accuracy on the held-out task
(`eval.task`) before and after.
"""

from __future__ import annotations

from lowtune import data, models, training, ui
from lowtune.config import Recipe
from lowtune.evaluate import heldout_accuracy
from lowtune.placement import Placement
from lowtune.results import BeforeAfter, ImplicitRewardAccuracy, RunSummary
from lowtune.runs import RunDir

# TRL's lr 1e-6 is sized for full fine-tuning; a LoRA adapter starting at zero takes larger steps.
TRAIN_DEFAULTS = dict(learning_rate=5e-5, beta=0.1, max_length=512, per_device_eval_batch_size=16)


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    base, tokenizer = training.bare_base(recipe, placement, "DPO", "mean logits and top-1 flags")
    pairs = data.load_pairs(recipe.data, recipe.system_prompt())
    ui.say(f"{len(pairs.train)} training pairs, {len(pairs.heldout or [])} held-out pairs ({pairs.format})")

    before = heldout_accuracy(base, tokenizer, recipe, before=True)
    trainer = make_trainer(recipe, args, base, tokenizer, pairs)
    fit = training.fit(trainer, run_dir, recipe, placement, lambda: heldout_accuracy(trainer.model, tokenizer, recipe))
    preference = implicit_reward_accuracy(trainer) if pairs.heldout is not None else None

    after = heldout_accuracy(trainer.model, tokenizer, recipe)
    details = {"data_format": pairs.format, "loss_type": list(args.loss_type), "beta": args.beta,
               "logprob_kernel": "trl"}  # fmt: skip
    return RunSummary("dpo", recipe.model.name, len(pairs.train), fit, details, heldout=BeforeAfter(before, after),
                      preference=preference, has_preference=True, skipped_rows=pairs.skipped)  # fmt: skip


def make_trainer(recipe: Recipe, args, base, tokenizer, pairs: data.Pairs):
    """TRL's DPOTrainer on the bare base + a LoRA config: TRL wraps the base once and takes the
    reference by switching the adapter off (no `ref` adapter copy, no second model). The trainer
    `lowtune plan` traces, too."""
    from trl import DPOTrainer

    training.exact_eval_batches(args, pairs.heldout)
    return DPOTrainer(
        model=base,
        args=args,
        train_dataset=pairs.train,
        eval_dataset=pairs.heldout,
        processing_class=tokenizer,
        peft_config=models.peft_config(recipe.lora),
    )


def implicit_reward_accuracy(trainer) -> ImplicitRewardAccuracy:
    """Held-out pairs where beta * log(pi/ref) of the chosen reply beats the rejected one's (TRL's eval metrics)."""
    return ImplicitRewardAccuracy.from_metrics(trainer.evaluate(), len(trainer.eval_dataset))
