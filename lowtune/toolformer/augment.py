"""Toolformer's data augmentation (Schick et al. 2023, arXiv 2302.04761, Section 2 and Appendix A).

For each text x and tool:

1. Positions. With the tool's few-shot annotation prompt P(x) in front (it shows the text x), the
   model's probability of "[" before token i is read at every position in one forward pass; positions
   with p("[" | P(x), x_<i) > tau_s are kept, at most the top k. A tool may say what its result can
   precede (`precedes`; the calculator: a number): then only those positions are candidates.
2. Calls. At each kept position, up to m calls are sampled after "P(x) x_<i [Tool(", stopping at ")";
   a sample that never closes is dropped, and so is one the tool finds unusable there (`usable`; the
   calculator: a number the text has not written yet, read ahead in P(x)).
3. Execution. Each call runs through `run_tool` (time limit; a failure is just no result).
4. Filtering. With the call as a *prefix* of the text (the model has not yet learned calls inside
   text), L_i(z) = -sum_j w_(j-i) log p(x_j | z, x_<j), weights w_t = max(0, 1 - 0.2 t) normalized.
   L+ = L_i(call with result), L- = min(L_i(no call), L_i(call without result)); the call is kept when
   L- - L+ >= tau_f. At most one call per position survives (the largest gain).

The call syntax is `lowtune.toolformer.calls`, the numbers of steps 1 and 4 `lowtune.toolformer.filter`;
this module drives the model through the steps and writes the results.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lowtune.files import write_new_text
from lowtune.toolformer.calls import format_call, open_bracket_ids
from lowtune.toolformer.filter import call_gain, keep_call, open_probability, weighted_losses
from lowtune.toolformer.tool_calls import tool_call_row
from lowtune.tools import run_tool

# Paper defaults (Appendix A): the calculator samples many positions cheaply, other tools fewer.
PAPER_SETTINGS = {
    "Calculator": dict(tau_s=0.0, tau_f=0.5, top_k=20, samples=10),
    "default": dict(tau_s=0.05, tau_f=1.0, top_k=5, samples=5),
}


def annotation_prompt(tool, text: str) -> str:
    """The few-shot prompt P(x) that asks the model to insert `tool` calls into `text`."""
    shots = "\n\n".join(f"Input: {plain}\nOutput: {annotated}" for plain, annotated in tool.examples)
    return (
        f"Insert calls to the {tool.name} tool into the text where its result helps predict what follows. "
        f"{tool.description} A call is written [{tool.name}(input) -> result].\n\n{shots}\n\nInput: {text}\nOutput:"
    )


STATS_COLUMNS = ["tool", "texts", "positions sampled", "calls sampled", "executed", "kept"]


@dataclass
class ToolStats:
    texts: int = 0
    positions: int = 0
    sampled: int = 0
    executed: int = 0
    kept: int = 0


@dataclass
class Augmented:
    text: str
    annotated: str
    calls: list[dict] = field(default_factory=list)  # kept calls: tool, arg, result, position, gain


def write_results(out: Path, results: list[Augmented], fmt: str = "inline", tools: list | None = None) -> None:
    """Write `lowtune augment`'s rows to `out` as JSON lines, whole or not at all: a unique temporary beside
    it, then linked into place, refusing to replace a file that appeared at `out` while augmenting.

    `inline`: {text, annotated, calls}, the calls written into the text; `tool_calls`: TRL's tool-calling rows
    {messages, tools} for `tools` (`lowtune.toolformer.tool_calls.tool_call_row`; the text is the assistant's)."""
    if fmt == "tool_calls":
        rows = [tool_call_row(r.annotated, tools or []) for r in results]
    else:
        rows = [dataclasses.asdict(r) for r in results]
    write_new_text(Path(out), "".join(json.dumps(r) + "\n" for r in rows), doing="augmenting")


class Augmenter:
    """Runs the pipeline with one causal LM (any HF model or PeftModel) over texts, for several tools."""

    def __init__(self, model, tokenizer, tools: list, settings: dict | None = None, batch_size: int = 32,
                 max_arg_tokens: int = 24, temperature: float = 1.0, seed: int = 0):  # fmt: skip
        self.model, self.tokenizer, self.tools = model, tokenizer, tools
        chosen = {k: v for k, v in (settings or {}).items() if v is not None}  # None: the paper's default
        self.settings = {t.name: {**PAPER_SETTINGS.get(t.name, PAPER_SETTINGS["default"]), **chosen}
                         for t in tools}  # fmt: skip
        self.batch_size, self.max_arg_tokens, self.temperature = batch_size, max_arg_tokens, temperature
        self.generator = torch.Generator().manual_seed(seed)
        self.stats = {t.name: ToolStats() for t in tools}
        self.open_ids = open_bracket_ids(tokenizer)
        # transformers 5.24 renamed forward's past_key_values to cache (the old name goes in 5.40)
        forward = inspect.signature(type(self._base()).forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"

    # ------------------------------------------------------------ model access

    @property
    def device(self):
        return self._head().weight.device

    def _base(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _head(self):
        return self._base().get_output_embeddings()

    @torch.no_grad()
    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return self._base().get_decoder()(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state

    def _encode(self, texts: list[str], side: str = "right"):
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side=side, add_special_tokens=False)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    # ------------------------------------------------------------ the pipeline

    def augment(self, texts: list[str], progress=None) -> list[Augmented]:
        out = []
        for text in texts:
            out.append(self.augment_one(text))
            if progress:
                progress()
        return out

    def _text_tokens(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of the text as it follows the prompt (after one space), and each token's start in `text`."""
        enc = self.tokenizer(" " + text, return_offsets_mapping=True, add_special_tokens=False)
        return enc["input_ids"], [max(start - 1, 0) for start, _ in enc["offset_mapping"]]

    def agreement(self, results: list[Augmented], human: list[list[int]], window: int = 2) -> dict[str, int]:
        """Kept calls of `results` against human call positions (characters of each text, e.g. GSM8K's
        annotations): kept calls within `window` tokens of a human one, and human positions with a kept
        call that near."""
        totals = dict(kept=0, kept_near_human=0, human_positions=0, human_with_kept=0)
        for result, chars in zip(results, human, strict=True):
            starts = self._text_tokens(result.text)[1]
            kept = [c["position"] for c in result.calls]
            near_kept, near_human = agreement(kept, [char_to_token(starts, p) for p in chars], window)
            totals["kept"] += len(kept)
            totals["kept_near_human"] += near_kept
            totals["human_positions"] += len(chars)
            totals["human_with_kept"] += near_human
        return totals

    def stats_rows(self) -> list[list[str]]:
        """One row per tool under STATS_COLUMNS, for a table."""
        return [[name, *(str(v) for v in vars(s).values())] for name, s in self.stats.items()]

    def augment_one(self, text: str) -> Augmented:
        tokens = self._text_tokens(text)
        best: dict[int, dict] = {}  # character position -> the kept call with the largest gain there
        for tool in self.tools:
            cfg, stats = self.settings[tool.name], self.stats[tool.name]
            stats.texts += 1
            positions = self.positions(tool, text, tokens, cfg["tau_s"], cfg["top_k"])
            stats.positions += len(positions)
            calls = self.sample_calls(tool, text, tokens, positions, cfg["samples"])
            stats.sampled += len(calls)
            # A tool may refuse a call that could not be made where it stands (the calculator: with a number the
            # text has not said yet, which the annotating model read further on in P(x)).
            usable = getattr(tool, "usable", None)
            calls = [(i, arg) for i, arg in calls if usable is None or usable(arg, text[: tokens[1][i]])]
            results = [(i, arg, run_tool(tool, arg)) for i, arg in calls]
            results = [(i, arg, r) for i, arg, r in results if r is not None]
            stats.executed += len(results)
            for (i, arg, result), losses in zip(results, self.call_losses(tool, text, tokens, results), strict=True):
                if keep_call(*losses, cfg["tau_f"]):
                    gain = call_gain(*losses)
                    stats.kept += 1
                    char = tokens[1][i]
                    if char not in best or gain > best[char]["gain"]:
                        best[char] = dict(tool=tool.name, arg=arg, result=result, position=i, gain=round(gain, 4))
        annotated = text
        for char in sorted(best, reverse=True):
            c = best[char]
            call = format_call(c["tool"], c["arg"], c["result"])
            before = annotated[:char].rstrip(" ")
            annotated = f"{before} {call} {annotated[char:].lstrip(' ')}" if before else f"{call} {annotated[char:]}"
        return Augmented(text, annotated, [best[c] for c in sorted(best)])

    def positions(self, tool, text: str, tokens, tau_s: float, top_k: int) -> list[int]:
        """Token positions i (1..n-1) of `text` with p("[" | P(x), x_<i) > tau_s, the top k."""
        text_ids = tokens[0]
        if len(text_ids) < 2:
            return []
        prompt_ids = self.tokenizer(annotation_prompt(tool, text), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + text_ids], device=self.device)
        hidden = self._hidden(ids, torch.ones_like(ids))[0]
        # the state at text token j-1 predicts what comes before text token j (j = 1..n-1)
        states = hidden[len(prompt_ids) : len(prompt_ids) + len(text_ids) - 1]
        p_open = open_probability(states, self._head(), self.open_ids)
        order = torch.argsort(p_open, descending=True).tolist()
        allowed = candidate_positions(tool, text, tokens[1])
        return [j + 1 for j in order if p_open[j] > tau_s and (allowed is None or j + 1 in allowed)][:top_k]

    @torch.no_grad()
    def sample_calls(self, tool, text: str, tokens, positions: list[int], samples: int) -> list[tuple[int, str]]:
        """Up to `samples` arguments per position, sampled after "P(x) x_<i [Tool(" and closed by ")"."""
        if not positions or samples < 1:
            return []
        prompt = annotation_prompt(tool, text)
        prefixes = [f"{prompt} {text[: tokens[1][i]].rstrip(' ')} [{tool.name}(" for i in positions]
        calls = []
        per_batch = max(1, self.batch_size // samples)
        for start in range(0, len(prefixes), per_batch):
            chunk = prefixes[start : start + per_batch]
            for k, generated in enumerate(self._sample(chunk, samples)):
                arg, closed, _ = generated.partition(")")
                if closed and "\n" not in arg and "[" not in arg:  # an empty argument is a call too (Calendar())
                    calls.append((positions[start + k // samples], arg.strip()))
        return list(dict.fromkeys(calls))  # the same argument sampled twice at a position runs once

    def _sample(self, prefixes: list[str], samples: int) -> list[str]:
        """`samples` continuations of each prefix (row k belongs to prefix k // samples), each up to the first
        ")", "]" or newline or max_arg_tokens. Each prefix is read once and its cache repeated for the samples
        (generate() with num_return_sequences would read the long annotation prompt `samples` times)."""
        ids, mask = self._encode(prefixes, side="left")
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = _cache(out)
        cache.batch_repeat_interleave(samples)
        mask = mask.repeat_interleave(samples, 0)
        logits = out.logits[:, -1].float().repeat_interleave(samples, 0)
        generated = [[] for _ in range(len(prefixes) * samples)]
        done = torch.zeros(len(generated), dtype=torch.bool)
        for _ in range(self.max_arg_tokens):
            probs = torch.softmax(logits / self.temperature, dim=-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
            for row in (~done).nonzero()[:, 0].tolist():
                generated[row].append(int(nxt[row]))
                piece = self.tokenizer.decode(generated[row][-1:])
                done[row] = any(c in piece for c in ")]\n") or int(nxt[row]) == self.tokenizer.eos_token_id
            if done.all():
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            where = mask.sum(1, keepdim=True) - 1
            step = self.model(input_ids=nxt[:, None].to(self.device), attention_mask=mask, position_ids=where,
                              use_cache=True, **{self._cache_arg: cache})  # fmt: skip
            cache, logits = _cache(step), step.logits[:, -1].float()
        return self.tokenizer.batch_decode(generated, skip_special_tokens=True)

    @torch.no_grad()
    def call_losses(
        self, tool, text: str, tokens, results: list[tuple[int, str, str]]
    ) -> list[tuple[float, float, float]]:
        """(L_i(no call), L_i(call without result), L_i(call with result)) for each executed call (i, arg, result):
        what `keep_call` and `call_gain` take."""
        if not results:
            return []
        prefixes = [""] + [
            p for _, arg, r in results for p in (format_call(tool.name, arg), format_call(tool.name, arg, r))
        ]
        positions = sorted({i for i, _, _ in results})
        losses = weighted_losses(self._hidden, self._head(), self.tokenizer, prefixes, tokens[0], positions,
                                 self.batch_size)  # fmt: skip
        return [(losses[0][i], losses[1 + 2 * k][i], losses[2 + 2 * k][i]) for k, (i, _, _) in enumerate(results)]


def _cache(output):
    """The KV cache of a forward pass, under its transformers 5.24+ name or the older one."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def candidate_positions(tool, text: str, starts: list[int]) -> set[int] | None:
    """The token positions where a call of `tool` can help, or None for anywhere. A tool may say what its
    result can precede with a regular expression `precedes` (the calculator: a number); a position then
    is the token holding the first character of each match that does not continue a word or number.
    Elsewhere the result cannot make the next tokens likelier, so sampling there is wasted."""
    import bisect

    precedes = getattr(tool, "precedes", None)
    if precedes is None:
        return None
    found = (m.start() for m in re.finditer(rf"(?<![\w.,])(?:{precedes})", text))
    return {bisect.bisect_right(starts, c) - 1 for c in found} - {-1}


def agreement(kept: list[int], human: list[int], window: int = 2) -> tuple[int, int]:
    """(kept calls within `window` tokens of a human call position, human positions with a kept call within
    `window` tokens); positions are token indices."""
    near = lambda a, bs: any(abs(a - b) <= window for b in bs)  # noqa: E731
    return sum(near(k, human) for k in kept), sum(near(h, kept) for h in human)


def char_to_token(starts: list[int], char: int) -> int:
    """The index of the token that starts at or after character `char` (a call inserted there precedes it)."""
    import bisect

    return bisect.bisect_left(starts, char)
