"""Tool-augmented generation: the model's native tool calls when its chat template has tools, else
Toolformer's inline calls.

Native (`lowtune.toolformer.tool_calls`): the prompt is rendered with the tools' JSON schemas
(`apply_chat_template(..., tools=...)`), decoding stops after a call (`</tool_call>`), the call is parsed
(the tokenizer's `response_template`, else the Qwen2.5 / Hermes syntax), the tool runs, its result goes
back as a `tool` message and the model goes on in a new assistant turn. A call that cannot be run (bad
JSON, an unknown tool, arguments the tool does not take) ends the reply there.

Inline, Toolformer's inference (Schick et al. 2023, Section 3): the model writes "[Calculator(12 * 24) ->",
lowtune stops decoding there, calls the tool and appends " 288]"; the model then goes on from the
result. With `trigger_top_k=k` a call starts whenever "[" is among the k most likely next tokens, not
only when it is the most likely (the paper uses k = 10), while no call has been made yet.

Either way at most `max_calls` calls per reply (1 by default), and each call is reported as {"tool", "arg",
"result", "well_formed"}: well-formed is a call of a known tool that lowtune could run (the tool may still
give no result).
"""

from __future__ import annotations

import json

import torch

from lowtune.toolformer.calls import ARROW, open_bracket_ids, open_call
from lowtune.toolformer.tool_calls import (
    CALL_CLOSE,
    call_input,
    parse_reply,
    schema_name,
    supports_tool_calls,
    tool_schema,
)
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
    """Greedy chat-templated reply to `prompt` that may call `tools`: natively when the tokenizer's chat template
    renders tool calls (`trigger_top_k` does not apply), else inline. Returns (reply, calls)."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}
    ]
    if tools and supports_tool_calls(tokenizer):
        return _native(model, tokenizer, messages, tools, max_new_tokens, max_calls)
    return _inline(model, tokenizer, messages, tools, max_new_tokens, max_calls, trigger_top_k)


def _greedy(model, tokenizer, ids: torch.Tensor, budget: int, stop: str | None, processors=None) -> torch.Tensor:
    """The new token ids of a greedy continuation of `ids`, stopping after `stop` when given."""
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False,
        temperature=None, top_p=None, top_k=None, logits_processor=processors,
        stop_strings=[stop] if stop else None, tokenizer=tokenizer,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return out[0, ids.shape[1] :]


def _native(model, tokenizer, messages: list[dict], tools: list, max_new_tokens: int, max_calls: int):
    schemas = [tool_schema(t) for t in tools]
    by_name = {schema_name(s): (t, s) for t, s in zip(tools, schemas, strict=True)}
    turns, texts, calls, used = [], [], [], 0
    while used < max_new_tokens:
        prefix = tokenizer.apply_chat_template([*messages, *turns], tools=schemas, tokenize=False,
                                               add_generation_prompt=True)  # fmt: skip
        ids = tokenizer(prefix, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
        calling = len(calls) < max_calls
        new = _greedy(model, tokenizer, ids, max_new_tokens - used, CALL_CLOSE if calling else None)
        used += len(new)
        raw = tokenizer.decode(new, skip_special_tokens=False)
        for token in {tokenizer.eos_token, tokenizer.pad_token} - {None}:
            raw = raw.replace(token, "")
        text, found = parse_reply(tokenizer, raw, prefix) if calling else (raw.strip(), [])
        texts.append(text)
        if not found:
            break
        call = found[0]
        tool, schema = by_name.get(call["name"], (None, None))
        arg = call_input(schema, call["arguments"]) if schema else None
        if arg is None:  # not a call lowtune can run: the reply ends with it
            calls.append({"tool": call["name"], "arg": call.get("raw") or json.dumps(call["arguments"]),
                          "result": None, "well_formed": False})  # fmt: skip
            texts[-1] = raw.strip()
            break
        result = run_tool(tool, arg)
        calls.append({"tool": call["name"], "arg": arg, "result": result, "well_formed": True})
        call_id, function = f"call_{len(calls) - 1}", {"name": call["name"], "arguments": call["arguments"]}
        answer = result if result is not None else f"error: {call['name']} gave no result"
        turns += [
            {"role": "assistant", "content": text,
             "tool_calls": [{"id": call_id, "type": "function", "function": function}]},
            {"role": "tool", "tool_call_id": call_id, "name": call["name"], "content": answer},
        ]  # fmt: skip
    return " ".join(t for t in texts if t), calls


def _inline(model, tokenizer, messages, tools, max_new_tokens, max_calls, trigger_top_k):
    from transformers import LogitsProcessorList

    by_name = {t.name.lower(): t for t in tools}
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
        out = _greedy(model, tokenizer, ids, budget, ARROW if calling else None, processors)
        new = tokenizer.decode(torch.cat([reply_ids[0], out]), skip_special_tokens=True)
        call = open_call(new) if calling else None
        if call is None:
            reply = new
            if calling and new.rstrip().endswith(ARROW):  # an arrow that is not a call: decode on without stopping
                stop_at_arrow = False
                continue
            break
        tool = by_name.get(call.tool.lower())
        result = run_tool(tool, call.arg) if tool else None
        calls.append({"tool": call.tool, "arg": call.arg, "result": result, "well_formed": tool is not None})
        reply = f"{new.rstrip()} {result if result is not None else ''}]".replace(" ]", "]")
    return reply, calls
