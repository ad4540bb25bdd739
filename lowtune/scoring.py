"""Scoring with a trained reward model: the model reads a conversation (chat template, the end kept when too
long) and gives one number. Used by `lowtune score`, PPO's reward and the reward method's evaluation.

    >>> rm = RewardModel.load("runs/reward")
    >>> rm.score([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]])
"""

from __future__ import annotations

from pathlib import Path

import torch

from lowtune import models, runs
from lowtune.data.preference import HH_TURN, transcript_turns
from lowtune.errors import LowtuneError
from lowtune.results import PairwiseAccuracy

DEFAULT_MAX_LENGTH = 512  # tokens a reward model reads when its recipe sets no train.max_length
SCORE_BATCH = 16


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


def pairwise_accuracy(model, pairs, pad_token_id: int, batch_size: int = SCORE_BATCH) -> PairwiseAccuracy | None:
    """Share of pairs ({chosen_ids, rejected_ids} rows) whose chosen sequence scores strictly above the rejected
    one (None without pairs)."""
    if pairs is None or len(pairs) == 0:
        return None
    chosen = scores(model, pairs["chosen_ids"], pad_token_id, batch_size)
    rejected = scores(model, pairs["rejected_ids"], pad_token_id, batch_size)
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return PairwiseAccuracy(n=len(pairs), accuracy=wins / len(pairs), mean_margin=sum(margins) / len(margins))


def reading(adapter_dir: Path) -> tuple[int | None, str | None]:
    """(max_length, system prompt) with which the reward run of `adapter_dir` read its conversations
    ((None, None) for an adapter outside a run)."""
    recipe = runs.read_recipe(adapter_dir)
    if recipe is None:
        return None, None
    return recipe.train.get("max_length", DEFAULT_MAX_LENGTH), recipe.system_prompt()


def conversation_encoder(adapter_dir: Path, tokenizer):
    """conversation -> token ids as the reward model of `adapter_dir` read them in training (its system prompt,
    its max_length), whatever system prompt the conversation came with."""
    max_length, system = reading(adapter_dir)

    def encode_conversation(conversation: list[dict]) -> list[int]:
        messages = [m for m in conversation if m["role"] != "system"]
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        return encode(tokenizer, messages, max_length)[0]

    return encode_conversation


class RewardModel:
    """A trained reward adapter on its base, ready to score conversations."""

    def __init__(self, model, tokenizer, max_length: int | None, system_prompt: str | None = None):
        self.model, self.tokenizer, self.max_length, self.system_prompt = model, tokenizer, max_length, system_prompt

    @classmethod
    def load(cls, run_or_adapter: str | Path, device: str = "auto", say=None) -> RewardModel:
        adapter = runs.find_adapter(run_or_adapter)
        model, tokenizer, _ = models.load_adapter(adapter, device, say, head="score")
        return cls(model, tokenizer, *reading(adapter))

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
