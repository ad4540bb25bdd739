"""Native tool calls on the builtin SmolLM2-135M: SFT on tool-calling rows, then held-out word problems with the
calculator called natively (`<tool_call>` JSON in the chat template's syntax) and without it.

    python benchmarks/tool_calls.py                         # about 12 min on 2 cores
    python benchmarks/tool_calls.py --n 10 --steps 5        # a quick look
    python benchmarks/tool_calls.py --threads 1             # on a 2-core machine busy with other work

1. Rows: the arithmetic-text stories (each the reply to its word problem, none built on a held-out problem's
   numbers) with the calculator call a good annotator keeps, `[Calculator(16 * 986) -> 15776]` before the
   result, written by the same function as `lowtune augment --format tool_calls`
   (`lowtune.toolformer.tool_calls.tool_call_row`): the question, an assistant turn with the story up to the
   result and the call, the tool's result, the rest of the story; the calculator's JSON schema as `tools`.
2. `lowtune train` (recipes/sft.yaml, data from that JSONL) in a fresh process. SmolLM2's template has no tools,
   so lowtune sets its ChatML template with tools (Qwen2.5's syntax) and the adapter's tokenizer keeps it.
3. The held-out 3-digit word problems, for the tuned model and the base (adapter off), each with the tokenizer
   the run saved: with the calculator (`generate_with_tools`, native calls: share of replies with a well-formed
   call, accuracy) and without tools (plain greedy).

Writes benchmarks/results/tool_calls.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, train_run, write_report  # noqa: E402
from lowtune import ui  # noqa: E402

RECIPE = ROOT / "recipes" / "sft.yaml"
DIGITS = 3


def annotated_story(story: str) -> str:
    """The story with the calculator call before its result: the first two numbers, the operation that gives
    the last one."""
    import re

    from lowtune.tools import calculator

    numbers = re.findall(r"\d+", story)
    a, b, result = numbers[0], numbers[1], numbers[-1]
    op = next(op for op in "+-*/" if calculator(f"{a} {op} {b}") == result)
    at = story.rindex(result)
    return f"{story[:at]}[Calculator({a} {op} {b}) -> {result}] {story[at:]}"


def write_rows(path: Path, n: int) -> str:
    """`n` tool-calling rows for the training stories; returns one row's rendering-ready example."""
    from lowtune.data.arithmetic_text import story_problems
    from lowtune.toolformer.tool_calls import tool_call_row
    from lowtune.tools import Calculator

    rows = [tool_call_row(annotated_story(story), [Calculator()], [{"role": "user", "content": question}])
            for question, story, _ in story_problems(n, DIGITS)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows[0]


def with_tools(model, tokenizer, problems, max_new_tokens: int) -> dict:
    """Accuracy with the calculator called natively, and how many replies made a well-formed call."""
    from lowtune.rewards import extract_answer, to_number
    from lowtune.toolformer.generate import generate_with_tools
    from lowtune.tools import Calculator

    began, correct, well_formed, called, examples = time.perf_counter(), 0, 0, 0, []
    with ui.progress_bar("with the calculator", len(problems)) as advance:
        for p in problems:
            reply, calls = generate_with_tools(model, tokenizer, p.question, [Calculator()], max_new_tokens)
            correct += to_number(extract_answer(reply)) == p.answer
            called += bool(calls)
            well_formed += any(c["well_formed"] for c in calls)
            examples.append({"question": p.question, "reply": reply, "calls": calls, "answer": p.answer})
            advance()
    n = len(problems)
    return {"accuracy": correct / n, "well_formed_call": well_formed / n, "any_call": called / n,
            "seconds": round(time.perf_counter() - began, 1), "examples": examples[:5]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200, help="training rows (stories with a call)")
    parser.add_argument("--steps", type=int, default=30, help="SFT steps (batch 8)")
    parser.add_argument("--n", type=int, default=50, help="held-out word problems")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads here and in the training process (default: torch's); on a 2-core machine busy with "
        "other work, 1 avoids threads waiting on each other (a 50x slower decode was seen with 2)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by the training process's torch

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from lowtune import evaluate, models
    from lowtune.data.arithmetic_text import word_problems
    from lowtune.toolformer.tool_calls import CHATML_TOOLS_TEMPLATE

    problems = word_problems(args.n, DIGITS)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "tool_calls.jsonl"
        example_row = write_rows(data, args.rows)
        overrides = [f"data.source={data}", f"train.max_steps={args.steps}", "train.logging_steps=5",
                     "eval.task=null", f"output.dir={tmp}"]  # fmt: skip
        run = train_run(RECIPE, "tool_calls", overrides)
        summary = json.loads((run / "summary.json").read_text())
        torch.manual_seed(0)
        model, tokenizer, _ = models.load_for_inference(str(run))
        assert tokenizer.chat_template == CHATML_TOOLS_TEMPLATE, "the adapter's tokenizer lost the tools template"
        plain = dict(max_new_tokens=args.max_new_tokens, batch_size=25)
        tuned = with_tools(model, tokenizer, problems, args.max_new_tokens)
        tuned_plain = evaluate.accuracy(model, tokenizer, problems, **plain)
        with model.disable_adapter():
            base = with_tools(model, tokenizer, problems, args.max_new_tokens)
            base_plain = evaluate.accuracy(model, tokenizer, problems, **plain)

    n = args.n
    report = {
        "benchmark": "tool_calls",
        "machine": machine_info(),
        "recipe": str(RECIPE.relative_to(ROOT)),
        "data": {"rows": args.rows, "digits": DIGITS, "example": example_row},
        "sft": {k: summary.get(k) for k in ("steps", "wall_time_s", "first_loss", "final_loss")},
        "n": n,
        "max_new_tokens": args.max_new_tokens,
        "base": {"with_calculator": base, "without_tools": base_plain.accuracy},
        "tuned": {"with_calculator": tuned, "without_tools": tuned_plain.accuracy},
        "examples_without_tools": {"base": base_plain.examples[:3], "tuned": tuned_plain.examples[:3]},
        "total_minutes": round((time.perf_counter() - began) / 60, 1),
    }
    pct = lambda x: f"{x:.0%}"  # noqa: E731
    loss = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    table = [
        ["training rows", f"{args.rows} stories, each with one native calculator call (tool_calls rows)"],
        ["SFT", f"{summary['steps']} steps of 8 rows, {summary['wall_time_s'] / 60:.1f} min, logged loss "
                f"{loss(summary['first_loss'])} -> {loss(summary['final_loss'])}"],
        [f"held-out 3-digit word problems (n={n}): base, replies with a well-formed native call",
         pct(base["well_formed_call"])],
        ["base, accuracy with the calculator", pct(base["accuracy"])],
        ["base, accuracy without tools", pct(base_plain.accuracy)],
        ["tuned, replies with a well-formed native call", pct(tuned["well_formed_call"])],
        ["tuned, accuracy with the calculator", pct(tuned["accuracy"])],
        ["tuned, accuracy without tools (plain greedy)", pct(tuned_plain.accuracy)],
        ["whole benchmark", f"{report['total_minutes']} min (a shared 2-core machine: times vary with its load)"],
    ]  # fmt: skip
    bars = {"base, no tools": base_plain.accuracy, "base + calculator": base["accuracy"],
            "tuned, no tools": tuned_plain.accuracy, "tuned + calculator": tuned["accuracy"]}  # fmt: skip
    write_report(args.out / "tool_calls", report, ["figure", "value"], table, bars, "held-out accuracy")
    ui.summary_table("Native tool calls on SmolLM2-135M: 3-digit word problems", [tuple(r) for r in table])


if __name__ == "__main__":
    main()
