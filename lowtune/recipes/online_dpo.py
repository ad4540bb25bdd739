"""Online DPO with verifiable rewards: TRL's experimental OnlineDPOTrainer on a (4-bit) base + LoRA.

Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback") samples two
completions per prompt from the policy being trained, ranks them with the weighted rule rewards (`rewards.*`,
as GRPO's; a tie keeps the first as chosen), and takes a DPO step on that fresh pair: -log sigmoid(beta *
[(log pi - log ref)(chosen) - (log pi - log ref)(rejected)]) (`train.loss_type: ipo` too). The reference is
the base with the adapter switched off: lowtune hands TRL the bare base plus a LoRA config, as for DPO. The
prompts are GRPO's (`data.load`, kind `prompt`). `trl.experimental.online_dpo` is TRL's experimental API;
lowtune tests it with TRL 1.16.0. Its log-probs come from the full logits (no fused LM head, so
`model.logprob_kernel` does not apply).
"""

from __future__ import annotations

from lowtune import data, models, rewards, training, ui
from lowtune.config import Recipe
from lowtune.evaluate import heldout_accuracy
from lowtune.placement import Placement
from lowtune.results import BeforeAfter, RunSummary
from lowtune.runs import RunDir

# TRL's lr 5e-7 is sized for full fine-tuning; LoRA takes DPO's step. Short completions keep a CPU step short.
TRAIN_DEFAULTS = dict(learning_rate=5e-5, max_new_tokens=64, temperature=0.8, per_device_train_batch_size=8,
                      logging_steps=1)  # fmt: skip


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    base, tokenizer = models.load(recipe.model, say=ui.say, placement=placement)
    base = models.prepare_quantized(base, placement.gradient_checkpointing)
    prompts = data.load(recipe.data, kind="prompt", system_prompt=recipe.system_prompt())
    ui.say(f"{len(prompts)} prompts from {recipe.data.source}")

    before = heldout_accuracy(base, tokenizer, recipe, before=True)
    trainer = make_trainer(recipe, args, base, tokenizer, prompts)
    fit = training.fit(trainer, run_dir, recipe, placement, lambda: heldout_accuracy(trainer.model, tokenizer, recipe))
    after = heldout_accuracy(trainer.model, tokenizer, recipe)
    weights = dict(zip(trainer.reward_func_names, args.reward_weights, strict=True))
    details = {"rewards": weights, "loss_type": args.loss_type, "beta": args.beta}
    return RunSummary("online_dpo", recipe.model.name, len(prompts), fit, details, heldout=BeforeAfter(before, after))


def make_trainer(recipe: Recipe, args, base, tokenizer, prompts):
    """TRL's OnlineDPOTrainer on the bare base + a LoRA config, with the recipe's weighted rule rewards as its
    reward functions (no judge or reward model): TRL wraps the base once and takes the reference by switching the
    adapter off. On a 4-bit base TRL's experimental trainer prepares the model for k-bit training itself (not run
    on a GPU here)."""
    from trl.experimental.online_dpo import OnlineDPOTrainer  # tested with TRL 1.16.0

    funcs, args.reward_weights = rewards.recipe_rewards(recipe.rewards, args.max_new_tokens)
    return OnlineDPOTrainer(
        model=base,
        reward_funcs=funcs,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        peft_config=models.peft_config(recipe.lora),
    )
