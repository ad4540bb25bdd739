"""Tool-augmented generation: decode until "->", run the tool, insert its result and "]", continue.

Toolformer's inference (Schick et al. 2023, Section 3): the model writes "[Calculator(12 * 24) ->",
lowtune stops decoding there, calls the tool and appends " 288]"; the model then goes on from the
result. At most `max_calls` calls per reply (1 by default). With `trigger_top_k=k` a call starts
whenever "[" is among the k most likely next tokens, not only when it is the most likely (the
paper uses k = 10), while no call has been made yet.
"""

from __future__ import annotations

import torch

from lowtune.toolformer.calls import ARROW, open_bracket_ids, open_call
from lowtune.tools import run_tool


class _TriggerCall:
    """Logits processor: force "[" when it is among the top k and the reply has no call yet."""

    def __init__(self, open_ids: list[int], k: int, start: int, tokenizer):
        self.open_ids, self.k, self.start, self.tokenizer = open_ids, k, start, tokenizer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        top = scores.topk(self.k, dim=-1).indices
        for row in range(scores.shape[0]):
            so_far = self.tokenizer.decode(input_ids[row, self.start :])
            if "[" in so_far:
                continue
            candidates = [t for t in self.open_ids if t in top[row]]
            if candidates:
                best = max(candidates, key=lambda t: scores[row, t])
                value = scores[row, best].clone()
                scores[row] = float("-inf")
                scores[row, best] = value
        return scores


@torch.no_grad()
def generate_with_tools(
    model,
    tokenizer,
    prompt: str,
    tools: list,
    max_new_tokens: int = 64,
    max_calls: int = 1,
    trigger_top_k: int | None = None,
    system_prompt: str | None = None,
) -> tuple[str, list[dict]]:
    """Greedy chat-templated reply to `prompt` with tool calls executed inline; returns (reply, calls)."""
    from transformers import LogitsProcessorList

    by_name = {t.name.lower(): t for t in tools}
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
    open_ids = open_bracket_ids(tokenizer) if trigger_top_k else []
    reply, calls, stop_at_arrow = "", [], True
    while True:
        reply_ids = tokenizer(reply, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
        ids = torch.cat([prompt_ids, reply_ids], dim=1)
        budget = max_new_tokens - reply_ids.shape[1]
        if budget <= 0:
            break
        calling = len(calls) < max_calls and bool(by_name) and stop_at_arrow
        processors = LogitsProcessorList()
        if calling and trigger_top_k and not calls:
            processors.append(_TriggerCall(open_ids, trigger_top_k, prompt_ids.shape[1], tokenizer))
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False,
            temperature=None, top_p=None, top_k=None, logits_processor=processors,
            stop_strings=[ARROW] if calling else None, tokenizer=tokenizer,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        new = tokenizer.decode(out[0, prompt_ids.shape[1] :], skip_special_tokens=True)
        call = open_call(new) if calling else None
        if call is None:
            reply = new
            if calling and new.rstrip().endswith(ARROW):  # an arrow that is not a call: decode on without stopping
                stop_at_arrow = False
                continue
            break
        tool = by_name.get(call.tool.lower())
        result = run_tool(tool, call.arg) if tool else None
        calls.append({"tool": call.tool, "arg": call.arg, "result": result})
        reply = f"{new.rstrip()} {result if result is not None else ''}]".replace(" ]", "]")
    return reply, calls
