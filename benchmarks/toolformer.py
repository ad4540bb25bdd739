"""Toolformer on the builtin SmolLM2-135M: augmentation + SFT, then word problems with and without the calculator.

    python benchmarks/toolformer.py                    # about 30 min on 2 cores
    python benchmarks/toolformer.py --texts 40 --steps 20 --n 30   # a quick look

1. Stories with 3-digit arithmetic (`lowtune.data.arithmetic_text`), each paired with the question it
   answers, are annotated with calculator calls by the base model itself (`lowtune.tools.augment`,
   CPU-sized: top-k positions and samples per position below the paper's 20 / 10).
2. SFT (LoRA) on chat rows: user = the question, assistant = the story with its kept calls (a story
   with no kept call stays as it was, as in the paper's augmented dataset).
3. Held-out word problems (never sharing numbers with the stories), greedy, answer = last number:
   the base model without tools, and the fine-tuned model with the calculator (decode to "->", run
   it, insert the result) and without it.

Writes benchmarks/results/toolformer_arithmetic.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, write_report  # noqa: E402
from lowtune import ui  # noqa: E402


def accuracy(model, tokenizer, problems, tools, max_new_tokens: int) -> tuple[float, list[dict]]:
    from lowtune.rewards import extract_answer, to_number
    from lowtune.tools.generate import generate_with_tools

    rows = []
    with ui.progress_bar("eval", len(problems)) as advance:
        for p in problems:
            reply, calls = generate_with_tools(model, tokenizer, p.question, tools, max_new_tokens)
            rows.append({"question": p.question, "reply": reply, "answer": p.answer, "calls": calls,
                         "correct": to_number(extract_answer(reply)) == p.answer})  # fmt: skip
            advance()
    return sum(r["correct"] for r in rows) / len(rows), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=150)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--n", type=int, default=60, help="held-out word problems")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import torch

    from lowtune import models, recipes
    from lowtune.config import ModelConfig, load_recipe
    from lowtune.data.arithmetic_text import story_problems, word_problems
    from lowtune.tools import Calculator
    from lowtune.tools.augment import Augmenter

    torch.manual_seed(0)
    base, tokenizer = models.load(ModelConfig(name="smollm2-135m-instruct"))
    base.eval()
    calculator = [Calculator()]
    triples = story_problems(args.texts)
    start = time.perf_counter()
    augmenter = Augmenter(base, tokenizer, calculator, dict(top_k=args.top_k, samples=args.samples))
    annotated = []
    with ui.progress_bar("augment", len(triples)) as advance:
        for _, story, _ in triples:
            annotated.append(augmenter.augment_one(story))
            advance()
    augment_s = time.perf_counter() - start
    stats = augmenter.stats["Calculator"]
    problems = word_problems(args.n)
    base_acc, base_rows = accuracy(base, tokenizer, problems, [], args.max_new_tokens)
    base_tools_acc, _ = accuracy(base, tokenizer, problems, calculator, args.max_new_tokens)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "toolformer.jsonl"
        rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a.annotated}]}
                for (q, _, _), a in zip(triples, annotated, strict=True)]  # fmt: skip
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        recipe = load_recipe(
            ROOT / "recipes" / "sft.yaml",
            [f"data.source={data}", "data.format=messages", f"train.max_steps={args.steps}", "eval.task=null",
             f"output.dir={tmp}/runs", "output.quiet=true"],
        )  # fmt: skip
        run, summary = recipes.train(recipe)
        tuned, tokenizer2, _ = models.load_for_inference(str(run.path))
        tuned_tools_acc, tuned_rows = accuracy(tuned, tokenizer2, problems, calculator, args.max_new_tokens)
        tuned_acc, _ = accuracy(tuned, tokenizer2, problems, [], args.max_new_tokens)

    kept_texts = sum(bool(a.calls) for a in annotated)
    report = {
        "benchmark": "toolformer_arithmetic",
        "machine": machine_info(),
        "settings": vars(args) | {"out": str(args.out)},
        "augmentation": {
            "texts": stats.texts,
            "positions": stats.positions,
            "sampled": stats.sampled,
            "executed": stats.executed,
            "kept": stats.kept,
            "texts_with_a_kept_call": kept_texts,
            "seconds": round(augment_s, 1),
        },  # fmt: skip
        "sft": {k: summary[k] for k in ("steps", "wall_time_s", "first_loss", "final_loss")},
        "accuracy": {
            "base": base_acc,
            "base_with_calculator": base_tools_acc,
            "tuned_with_calculator": tuned_tools_acc,
            "tuned_without_calculator": tuned_acc,
        },  # fmt: skip
        "calls_made_by_tuned_model": sum(bool(r["calls"]) for r in tuned_rows),
        "examples": {
            "augmented": [a.annotated for a in annotated if a.calls][:5],
            "base": base_rows[:3],
            "tuned_with_calculator": tuned_rows[:5],
        },  # fmt: skip
    }
    table = [
        ["augmentation", f"{stats.texts} stories: {stats.positions} positions, {stats.sampled} calls sampled, "
                         f"{stats.executed} executed, {stats.kept} kept ({kept_texts} stories with a call), "
                         f"{augment_s / 60:.1f} min"],
        ["SFT", f"{summary['steps']} steps, {summary['wall_time_s'] / 60:.1f} min"],
        [f"held-out 3-digit word problems (n={args.n}), base model, no tools", f"{base_acc:.0%}"],
        ["base model with the calculator", f"{base_tools_acc:.0%}"],
        ["after augmentation + SFT, with the calculator", f"{tuned_tools_acc:.0%}"],
        ["after augmentation + SFT, without it", f"{tuned_acc:.0%}"],
        ["replies of the tuned model that called the calculator", f"{report['calls_made_by_tuned_model']} of {args.n}"],
    ]  # fmt: skip
    write_report(args.out / "toolformer_arithmetic", report, ["figure", "value"], table,
                 {"base": base_acc, "tuned + calculator": tuned_tools_acc}, "held-out accuracy")  # fmt: skip
    ui.summary_table("Toolformer on SmolLM2-135M: 3-digit word problems", [tuple(r) for r in table])


if __name__ == "__main__":
    main()
