"""Supervised fine-tuning: TRL's SFTTrainer on a (4-bit) base with a LoRA adapter.

Loss covers the assistant reply / completion only (TRL's completion_only_loss on the
prompt/completion records that lowtune.data produces); plain `text` rows train on every token.
Set `train.packing=true` to pack short rows into `train.max_length` blocks.
"""

from __future__ import annotations

from typing import Any

from lowtune import data, models, ui
from lowtune.config import Recipe
from lowtune.recipes import fit, heldout_accuracy, trl_args
from lowtune.runs import RunDir

TRAIN_DEFAULTS = dict(learning_rate=2e-4, max_length=1024)


def run(recipe: Recipe, run_dir: RunDir) -> dict[str, Any]:
    from trl import SFTTrainer

    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say)
    dataset = data.load(recipe.data, kind="sft", system_prompt=recipe.system_prompt())
    ui.say(f"{len(dataset)} training rows from {recipe.data.source}")

    with model.disable_adapter():
        before = heldout_accuracy(model, tokenizer, recipe, before=True)

    args = trl_args(recipe, run_dir)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    summary = fit(trainer, run_dir, recipe, lambda: heldout_accuracy(model, tokenizer, recipe))

    after = heldout_accuracy(model, tokenizer, recipe)
    return {
        "method": "sft",
        "model": recipe.model.name,
        "rows": len(dataset),
        **summary,
        "eval_before": before,
        "eval_after": after,
    }
