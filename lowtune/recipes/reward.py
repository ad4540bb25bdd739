"""Reward modeling: TRL's RewardTrainer on a (4-bit) base with a one-output score head + LoRA.

The model scores a whole conversation with one number; training pushes the chosen reply's score
above the rejected one's (Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected); Ouyang et al.
2022). The score head is new, trained in full and saved inside the adapter (PEFT's
`modules_to_save`), so the adapter directory alone reproduces the scores with plain
transformers + peft:

    base = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=1)
    model = PeftModel.from_pretrained(base, "runs/reward/adapter")

Scoring a trained model (`lowtune score`, PPO's reward) lives in `lowtune.scoring`.
Sequences longer than `train.max_length` keep their END (the final replies, where a pair
differs) rather than being dropped; how many were cut is in summary.json. Evaluation is pairwise
accuracy on held-out pairs (chosen scored strictly above rejected), before and after training.
"""

from __future__ import annotations

from lowtune import data, models, training, ui
from lowtune.config import Recipe
from lowtune.placement import Placement
from lowtune.results import BeforeAfter, RunSummary
from lowtune.runs import RunDir
from lowtune.scoring import DEFAULT_MAX_LENGTH, encode, pairwise_accuracy

# Pairs of similar length share a batch (transformers' LengthGroupedSampler over the `length` column):
# HH-RLHF conversations (median 158 tokens, longest 997 with SmolLM2) in random batches were mostly padding.
TRAIN_DEFAULTS = dict(
    learning_rate=1e-4,
    max_length=DEFAULT_MAX_LENGTH,
    per_device_eval_batch_size=16,
    train_sampling_strategy="group_by_length",
    remove_unused_columns=False,  # keeps `length` for the sampler; the collator reads only the ids
)


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say, head="score", placement=placement)
    pairs = data.load_pairs(recipe.data, recipe.system_prompt())
    trainer, cut = make_trainer(recipe, args, model, tokenizer, pairs)
    train = trainer.train_dataset
    heldout, heldout_cut = tokenize_pairs(pairs.heldout, tokenizer, args.max_length) if pairs.heldout else (None, 0)
    ui.say(
        f"{len(train)} training pairs, {len(heldout or [])} held-out pairs ({pairs.format}); "
        f"{cut + heldout_cut} sequence(s) longer than {args.max_length} tokens keep their last tokens"
    )

    before = pairwise_accuracy(model, heldout, tokenizer.pad_token_id, args.per_device_eval_batch_size)
    fit = training.fit(trainer, run_dir, recipe, placement)
    after = pairwise_accuracy(model, heldout, tokenizer.pad_token_id, args.per_device_eval_batch_size)
    details = {"data_format": pairs.format, "truncated_sequences": cut + heldout_cut}
    return RunSummary("reward", recipe.model.name, len(train), fit, details, pairwise=BeforeAfter(before, after),
                      skipped_rows=pairs.skipped)  # fmt: skip


def make_trainer(recipe: Recipe, args, model, tokenizer, pairs):
    """(TRL's RewardTrainer on the tokenized training pairs, how many sequences max_length cut); the trainer
    `lowtune plan` traces, too."""
    from trl import RewardTrainer

    train, cut = tokenize_pairs(pairs.train, tokenizer, args.max_length)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    _score_head_in_compute_dtype(model, model.get_input_embeddings().weight.dtype)  # the compute dtype
    return trainer, cut


def _score_head_in_compute_dtype(model, dtype) -> None:
    """TRL casts a quantized model's trainable weights to bf16 (the QLoRA recipe); LoRA layers cast their
    input, the score head does not, so on a float32 CPU run it must stay in the compute dtype."""
    for name, param in model.named_parameters():
        if param.requires_grad and "score" in name and param.dtype != dtype:
            param.data = param.data.to(dtype)


def tokenize_pairs(pairs, tokenizer, max_length: int | None):
    """{chosen_ids, rejected_ids, length} rows (RewardTrainer takes them as tokenized), and how many were cut."""
    from datasets import Dataset

    rows, cut = [], 0
    for r in pairs:
        chosen, c1 = encode(tokenizer, r["prompt"] + r["chosen"], max_length)
        rejected, c2 = encode(tokenizer, r["prompt"] + r["rejected"], max_length)
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected, "length": max(len(chosen), len(rejected))})
        cut += c1 + c2
    return Dataset.from_list(rows), cut
