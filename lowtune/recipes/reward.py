"""Reward modeling: TRL's RewardTrainer on a (4-bit) base with a one-output score head + LoRA.

The model scores a whole conversation with one number; training pushes the chosen reply's score
above the rejected one's (Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected); Ouyang et al.
2022). The score head is new, trained in full and saved inside the adapter (PEFT's
`modules_to_save`), so the adapter directory alone reproduces the scores with plain
transformers + peft:

    base = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=1)
    model = PeftModel.from_pretrained(base, "runs/reward/adapter")

Sequences longer than `train.max_length` keep their END (the final replies, where a pair
differs) rather than being dropped; how many were cut is in summary.json. Evaluation is pairwise
accuracy on held-out pairs (chosen scored strictly above rejected), before and after training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lowtune import data, models, ui
from lowtune.config import Recipe
from lowtune.data.preference import HH_TURN, transcript_turns
from lowtune.errors import LowtuneError
from lowtune.recipes import fit, trl_args
from lowtune.runs import RunDir

# Pairs of similar length share a batch (transformers' LengthGroupedSampler over the `length` column):
# HH-RLHF conversations (median 158 tokens, longest 997 with SmolLM2) in random batches were mostly padding.
TRAIN_DEFAULTS = dict(
    learning_rate=1e-4,
    max_length=512,
    per_device_eval_batch_size=16,
    train_sampling_strategy="group_by_length",
    remove_unused_columns=False,  # keeps `length` for the sampler; the collator reads only the ids
)
SCORE_BATCH = 16


def run(recipe: Recipe, run_dir: RunDir) -> dict[str, Any]:
    from trl import RewardTrainer

    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say, head="score")
    pairs = data.load_pairs(recipe.data, recipe.system_prompt())
    args = trl_args(recipe, run_dir)
    train, cut = tokenize_pairs(pairs.train, tokenizer, args.max_length)
    heldout, heldout_cut = tokenize_pairs(pairs.heldout, tokenizer, args.max_length) if pairs.heldout else (None, 0)
    ui.say(
        f"{len(train)} training pairs, {len(heldout or [])} held-out pairs ({pairs.format}); "
        f"{cut + heldout_cut} sequence(s) longer than {args.max_length} tokens keep their last tokens"
    )

    before = pairwise_accuracy(model, heldout, tokenizer.pad_token_id, args.per_device_eval_batch_size)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    _score_head_in_compute_dtype(model, models.resolve_dtype(recipe.model, models.resolve_device(recipe.model)))
    summary = fit(trainer, run_dir, recipe)
    after = pairwise_accuracy(model, heldout, tokenizer.pad_token_id, args.per_device_eval_batch_size)
    return {
        "method": "reward",
        "model": recipe.model.name,
        "rows": len(train),
        "data_format": pairs.format,
        "skipped_rows": pairs.skipped,
        "truncated_sequences": cut + heldout_cut,
        **summary,
        "pairwise_before": before,
        "pairwise_after": after,
    }


def _score_head_in_compute_dtype(model, dtype) -> None:
    """TRL casts a quantized model's trainable weights to bf16 (the QLoRA recipe); LoRA layers cast their
    input, the score head does not, so on a float32 CPU run it must stay in the compute dtype."""
    for name, param in model.named_parameters():
        if param.requires_grad and "score" in name and param.dtype != dtype:
            param.data = param.data.to(dtype)


def encode(tokenizer, conversation: list[dict] | str, max_length: int | None) -> tuple[list[int], bool]:
    """Token ids of one conversation as the reward model reads it, and whether it was cut.

    Messages go through the chat template (as TRL's RewardTrainer renders them); a string is
    tokenized as it is. Overlong sequences keep their last `max_length` tokens.
    """
    if isinstance(conversation, str):
        ids = tokenizer(conversation)["input_ids"]
    else:
        ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        return ids[-max_length:], True
    return ids, False


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


@torch.no_grad()
def scores(model, sequences: list[list[int]], pad_token_id: int, batch_size: int = SCORE_BATCH) -> list[float]:
    """The model's score for each token-id sequence (right-padded batches, score at the last real token)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths batch together
    by_index = {}
    for start in range(0, len(order), batch_size):
        batch = [sequences[i] for i in order[start : start + batch_size]]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, s in enumerate(batch):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for i, value in zip(order[start : start + batch_size], logits[:, 0].float().tolist(), strict=True):
            by_index[i] = value
    out = [by_index[i] for i in range(len(sequences))]
    model.train(was_training)
    return out


def pairwise_accuracy(model, pairs, pad_token_id: int, batch_size: int = SCORE_BATCH) -> dict[str, Any] | None:
    """Share of pairs whose chosen sequence scores strictly above the rejected one (None without pairs)."""
    if pairs is None or len(pairs) == 0:
        return None
    chosen = scores(model, pairs["chosen_ids"], pad_token_id, batch_size)
    rejected = scores(model, pairs["rejected_ids"], pad_token_id, batch_size)
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {"n": len(pairs), "accuracy": wins / len(pairs), "mean_margin": sum(margins) / len(margins)}


class RewardModel:
    """A trained reward adapter on its base, ready to score conversations.

    >>> rm = RewardModel.load("runs/reward")
    >>> rm.score([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]])
    """

    def __init__(self, model, tokenizer, max_length: int | None, system_prompt: str | None = None):
        self.model, self.tokenizer, self.max_length, self.system_prompt = model, tokenizer, max_length, system_prompt

    @classmethod
    def load(cls, run_or_adapter: str | Path, device: str = "auto", say=None) -> RewardModel:
        model, tokenizer, recipe = models.load_adapter(models.find_adapter(run_or_adapter), device, say, head="score")
        max_length = recipe.train.get("max_length", TRAIN_DEFAULTS["max_length"]) if recipe else None
        return cls(model, tokenizer, max_length, recipe.system_prompt() if recipe else None)

    def score(self, texts: list[list[dict] | str], batch_size: int = SCORE_BATCH) -> list[float]:
        """One score per conversation. A conversation is a list of {role, content} messages, rendered
        with the chat template as in training; a string in HH-RLHF form (\\n\\nHuman: … \\n\\nAssistant: …)
        is read as those turns, any other string is scored as plain text."""
        sequences = [encode(self.tokenizer, self._conversation(t), self.max_length)[0] for t in texts]
        return scores(self.model, sequences, self.tokenizer.pad_token_id, batch_size)

    def _conversation(self, text: list[dict] | str) -> list[dict] | str:
        if isinstance(text, str):
            if not HH_TURN.search(text):
                return text
            try:
                text = transcript_turns(text)
            except ValueError as e:
                raise LowtuneError(f"text {text[:40]!r}...: {e}") from None
        if self.system_prompt and text and text[0]["role"] != "system":
            text = [{"role": "system", "content": self.system_prompt}, *text]
        return text


def score(run_or_adapter: str | Path, texts: list[list[dict] | str], device: str = "auto") -> list[float]:
    """Scores of `texts` under the reward model in `run_or_adapter` (see RewardModel.score)."""
    return RewardModel.load(run_or_adapter, device).score(texts)
