"""Kahneman-Tversky optimization: TRL's KTOTrainer on a (4-bit) base + LoRA.

KTO (Ethayarajh et al. 2024) learns from unpaired examples, each reply labelled desirable or undesirable:
with r = log pi(y|x) - log ref(y|x) and z a batch estimate of KL(pi || ref) (from each prompt with another
row's completion), a desirable reply's loss is 1 - sigmoid(beta * (r - z)), an undesirable one's
1 - sigmoid(beta * (z - r)), weighted by `train.desirable_weight` / `train.undesirable_weight`. As in DPO the
reference is the base with the adapter switched off: lowtune hands TRL the bare base plus a LoRA config, so no
second copy of the weights exists. `train.loss_type: apo_zero_unpaired` passes through too.

Data (`data.load_unpaired`): unpaired rows {prompt, completion, label}, or preference pairs (the builtin
arithmetic pairs, or any pair format) split into one desirable and one undesirable row each. Evaluation: greedy
accuracy on the held-out task (`eval.task`) before and after.
"""

from __future__ import annotations

from lowtune import data, models, training, ui
from lowtune.config import Recipe
from lowtune.evaluate import heldout_accuracy
from lowtune.placement import Placement
from lowtune.results import BeforeAfter, RunSummary
from lowtune.runs import RunDir

# DPO's: TRL's lr 1e-6 is sized for full fine-tuning; a LoRA adapter starting at zero takes larger steps.
TRAIN_DEFAULTS = dict(learning_rate=5e-5, beta=0.1, max_length=512)


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    base, tokenizer = training.bare_base(recipe, placement, "KTO", "mean logits")
    rows = data.load_unpaired(recipe.data, recipe.system_prompt())
    ui.say(f"{rows.desirable} desirable and {rows.undesirable} undesirable examples ({rows.format})")

    before = heldout_accuracy(base, tokenizer, recipe, before=True)
    trainer = make_trainer(recipe, args, base, tokenizer, rows)
    fit = training.fit(trainer, run_dir, recipe, placement, lambda: heldout_accuracy(trainer.model, tokenizer, recipe))
    after = heldout_accuracy(trainer.model, tokenizer, recipe)
    details = {"data_format": rows.format, "desirable": rows.desirable, "undesirable": rows.undesirable,
               "loss_type": args.loss_type, "beta": args.beta, "logprob_kernel": "trl"}  # fmt: skip
    return RunSummary("kto", recipe.model.name, len(rows.train), fit, details, heldout=BeforeAfter(before, after),
                      skipped_rows=rows.skipped)  # fmt: skip


def make_trainer(recipe: Recipe, args, base, tokenizer, rows: data.Unpaired):
    """TRL's KTOTrainer on the bare base + a LoRA config: TRL wraps the base once and takes the reference by
    switching the adapter off (no `ref` adapter copy, no second model). TRL reads the rows in order (its KL
    estimate pairs each prompt with the previous row's completion), as `data.load_unpaired` arranged them."""
    from trl import KTOTrainer

    return KTOTrainer(
        model=base,
        args=args,
        train_dataset=rows.train,
        processing_class=tokenizer,
        peft_config=models.peft_config(recipe.lora),
    )
