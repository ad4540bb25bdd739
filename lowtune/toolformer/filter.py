"""The numbers behind Toolformer's augmentation (Schick et al. 2023, Section 2): how likely a call is at
each position, and the weighted-loss filter that decides which executed calls are kept.

With the call z as a prefix of the text x, L_i(z) = -sum_j w_(j-i) log p(x_j | z, x_<j), weights
w_t = max(0, 1 - 0.2 t) normalized. L+ = L_i(call with result), L- = min(L_i(no call), L_i(call
without result)); a call is kept when L- - L+ >= tau_f. All log-probabilities go through lowtune's
`token_logprobs` (no [tokens x vocab] tensor).
"""

from __future__ import annotations

import torch

from lowtune.kernels import token_logprobs

WEIGHT_SPAN = 5  # w_t = max(0, 1 - 0.2 t) is zero from t = 5 on


def loss_weights(n: int) -> torch.Tensor:
    """w_t = max(0, 1 - 0.2 t) for t = 0..n-1, normalized to sum 1 (the paper's weighting)."""
    w = torch.clamp(1.0 - 0.2 * torch.arange(n, dtype=torch.float32), min=0.0)
    return w / w.sum() if w.sum() > 0 else w


def call_gain(loss_none: float, loss_no_result: float, loss_with_result: float) -> float:
    """L- - L+: L- = min(L(no call), L(call without result)), L+ = L(call with result)."""
    return min(loss_none, loss_no_result) - loss_with_result


def keep_call(loss_none: float, loss_no_result: float, loss_with_result: float, tau_f: float) -> bool:
    """The filter the pipeline applies to each executed call: L- - L+ >= tau_f (see `call_gain`)."""
    return call_gain(loss_none, loss_no_result, loss_with_result) >= tau_f


def open_probability(states: torch.Tensor, head, open_ids: list[int]) -> torch.Tensor:
    """p("[") after each of `states` (last hidden states, one per row) under the output layer `head`: the
    summed probability of the tokens that open a call (`calls.open_bracket_ids`)."""
    logps = torch.stack([
        token_logprobs(states, head.weight, torch.full((len(states),), t, device=states.device), bias=head.bias)
        for t in open_ids
    ])  # fmt: skip
    return logps.logsumexp(0).exp()


def weighted_losses(
    hidden, head, tokenizer, prefixes: list[str], text_ids: list[int], positions: list[int], batch_size: int
) -> list[dict[int, float]]:
    """For each prefix z: {i: L_i(z)} over the given token positions of the text `text_ids`, in batches of
    `batch_size` right-padded rows. `hidden(ids, mask)` gives a model's last hidden states; `head` is its
    output layer."""
    weights = loss_weights(WEIGHT_SPAN)
    device = head.weight.device
    out = []
    for start in range(0, len(prefixes), batch_size):
        chunk = prefixes[start : start + batch_size]
        prefix_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] if p else [] for p in chunk]
        rows = [p + text_ids for p in prefix_ids]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        labels = torch.full_like(ids, -100)
        for row, p in enumerate(prefix_ids):
            labels[row, len(p) : len(p) + len(text_ids) - 1] = ids[row, len(p) + 1 : len(p) + len(text_ids)]
        logp = token_logprobs(hidden(ids, mask), head.weight, labels, bias=head.bias)  # logp[r, t] = log p(token t+1)
        for row, p in enumerate(prefix_ids):
            # log p(x_j | z, x_<j) for text token j sits at row position len(p) + j - 1
            per_token = {j: logp[row, len(p) + j - 1].item() for j in range(1, len(text_ids))}
            losses = {}
            for i in positions:
                span = [j for j in range(i, min(i + WEIGHT_SPAN, len(text_ids)))]
                losses[i] = -sum(weights[j - i].item() * per_token[j] for j in span)
            out.append(losses)
    return out
