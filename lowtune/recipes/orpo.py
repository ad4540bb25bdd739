"""Odds-ratio preference optimization: TRL's experimental ORPOTrainer on a (4-bit) base + LoRA.

ORPO (Hong et al. 2024) needs no reference model: the loss is the chosen reply's NLL minus
beta * log sigmoid(log odds(chosen) - log odds(rejected)), where odds(y) = p / (1 - p) of the reply's mean
per-token probability p (beta is the paper's lambda). It trains on the same preference pairs as DPO
(`data.load_pairs`). `trl.experimental.orpo` is TRL's experimental API; lowtune tests it with TRL 1.16.0.

Evaluation: held-out pair accuracy (ORPO's reward beta * mean log p of the chosen reply above the rejected
one's, from TRL's eval metrics) and greedy accuracy on the held-out task (`eval.task`) before and after.
"""

from __future__ import annotations

from lowtune import data, models, training, ui
from lowtune.config import Recipe
from lowtune.evaluate import heldout_accuracy, heldout_before
from lowtune.placement import Placement
from lowtune.results import BeforeAfter, ImplicitRewardAccuracy, RunSummary
from lowtune.runs import RunDir

# TRL's lr 1e-6 is sized for full fine-tuning; ORPO's loss is SFT's NLL plus a term, and LoRA takes SFT's step.
TRAIN_DEFAULTS = dict(learning_rate=2e-4, beta=0.1, max_length=512, per_device_eval_batch_size=16)


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say, placement=placement)
    pairs = data.load_pairs(recipe.data, recipe.system_prompt())
    ui.say(f"{len(pairs.train)} training pairs, {len(pairs.heldout or [])} held-out pairs ({pairs.format})")

    before = heldout_before(model, tokenizer, recipe)
    trainer = make_trainer(recipe, args, model, tokenizer, pairs)
    fit = training.fit(trainer, run_dir, recipe, placement, lambda: heldout_accuracy(model, tokenizer, recipe))
    preference = None
    if pairs.heldout is not None:
        preference = ImplicitRewardAccuracy.from_metrics(trainer.evaluate(), len(pairs.heldout))

    after = heldout_accuracy(model, tokenizer, recipe)
    details = {"data_format": pairs.format, "beta": args.beta}
    return RunSummary("orpo", recipe.model.name, len(pairs.train), fit, details, heldout=BeforeAfter(before, after),
                      preference=preference, has_preference=True, skipped_rows=pairs.skipped)  # fmt: skip


def make_trainer(recipe: Recipe, args, model, tokenizer, pairs: data.Pairs):
    """TRL's ORPOTrainer on the adapted model (no reference model: ORPO needs none). The model comes adapted, as
    for SFT: given a LoRA config, TRL's experimental trainer would prepare a 4-bit base itself and upcast it."""
    from trl.experimental.orpo import ORPOTrainer  # tested with TRL 1.16.0

    training.exact_eval_batches(args, pairs.heldout)
    return ORPOTrainer(
        model=model, args=args, train_dataset=pairs.train, eval_dataset=pairs.heldout, processing_class=tokenizer
    )
