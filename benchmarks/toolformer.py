"""Toolformer on the builtin SmolLM2-135M: the shipped `toolformer` recipe, then word problems with and
without the calculator, and where the model's own calls land in GSM8K solutions.

    python benchmarks/toolformer.py                           # about 30 min on 2 cores
    python benchmarks/toolformer.py --gsm8k 0 --set data.n_train=40 --set train.max_steps=20   # a quick look

1. `lowtune train toolformer` (recipes/toolformer.yaml) in a fresh process: the base model annotates
   3-digit arithmetic stories (each the reply to its word problem) with calculator calls, SFT trains on
   the annotated replies, and the held-out word problems (no story shares their numbers) are answered
   with tool-augmented generation before (base model) and after (tuned model).
2. The same held-out problems without tools, for the base model (adapter off) and the tuned model.
3. GSM8K test solutions with their <<...>> annotations removed (../shared/data/gsm8k/test.jsonl),
   annotated by the base model with the recipe's settings: how many kept calls land within 2 tokens of
   where the human annotators computed something, and how many of those places get a kept call.

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

from benchmarks.machine import machine_info, train_run, write_report  # noqa: E402
from lowtune import ui  # noqa: E402

RECIPE = ROOT / "recipes" / "toolformer.yaml"
FIELDS = ("question", "reply", "answer")
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def gsm8k_agreement(model, tokenizer, recipe, n: int) -> dict:
    """Annotate the first `n` GSM8K test solutions with the recipe's augmentation settings."""
    from lowtune.data.arithmetic_text import load_texts
    from lowtune.toolformer.augment import Augmenter
    from lowtune.tools import load_tool

    texts, human = load_texts(str(GSM8K), n)
    cfg = recipe.augment
    settings = {"tau_s": cfg.tau_s, "tau_f": cfg.tau_f, "top_k": cfg.top_k, "samples": cfg.samples}
    augmenter = Augmenter(model, tokenizer, [load_tool(t) for t in cfg.tools], settings, batch_size=cfg.batch_size)
    start = time.perf_counter()
    with ui.progress_bar("gsm8k", len(texts)) as advance:
        results = augmenter.augment(texts, progress=advance)
    return {"texts": len(texts), **augmenter.agreement(results, human),
            "stats": {name: vars(s) for name, s in augmenter.stats.items()},
            "seconds": round(time.perf_counter() - start, 1),
            "examples": [r.annotated for r in results if r.calls][:3]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--gsm8k", type=int, default=50, help="GSM8K test solutions to annotate (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import torch

    from lowtune import evaluate, models
    from lowtune.config import load_recipe
    from lowtune.tools import load_tool

    recipe = load_recipe(RECIPE, args.set)
    with tempfile.TemporaryDirectory() as tmp:
        run = train_run(RECIPE, "toolformer", [f"output.dir={tmp}", *args.set])
        summary = json.loads((run / "summary.json").read_text())
        augmented = [json.loads(line) for line in (run / "augmented.jsonl").read_text().splitlines()]
        torch.manual_seed(0)
        model, tokenizer, _ = models.load_for_inference(str(run))
        cfg = recipe.eval
        common = dict(n=cfg.n, digits=cfg.digits or recipe.data.digits, max_new_tokens=cfg.max_new_tokens)
        tuned = evaluate.word_problem_accuracy(model, tokenizer, **common)
        tools = [load_tool(t) for t in cfg.tools]
        tuned_tools = evaluate.word_problem_accuracy(model, tokenizer, tools=tools, **common)  # for its examples
        with model.disable_adapter():
            base = evaluate.word_problem_accuracy(model, tokenizer, **common)
            gsm8k = gsm8k_agreement(model, tokenizer, recipe, args.gsm8k) if args.gsm8k else None

    before, after = summary["eval_before"], summary["eval_after"]
    aug = summary["augmentation"]
    stats = next(iter(aug["tools"].values()))
    ratio = after["accuracy"] / base.accuracy if base.accuracy else float("inf")
    report = {
        "benchmark": "toolformer_arithmetic",
        "machine": machine_info(),
        "recipe": str(RECIPE.relative_to(ROOT)),
        "overrides": args.set,
        "augmentation": aug,
        "sft": {k: summary.get(k) for k in ("steps", "wall_time_s", "first_loss", "final_loss")},
        "accuracy": {
            "base_without_tools": base.accuracy,
            "base_with_calculator": before["accuracy"],
            "tuned_with_calculator": after["accuracy"],
            "tuned_without_calculator": tuned.accuracy,
            "tuned_with_calculator_rerun": tuned_tools.accuracy,
        },
        "replies_with_a_call": {"base": before.get("replies_with_a_call"), "tuned": after.get("replies_with_a_call")},
        "n": cfg.n,
        "ratio_tuned_with_calculator_to_base": ratio,
        "gsm8k": gsm8k,
        "examples": {
            "augmented": [r["annotated"] for r in augmented if r["calls"]][:5],
            "base": [dict(zip(FIELDS, e, strict=True)) for e in base.examples[:3]],
            "tuned_with_calculator": [dict(zip(FIELDS, e, strict=True)) for e in tuned_tools.examples[:5]],
        },
    }  # fmt: skip
    n = cfg.n
    calls = lambda e: f"{e.get('replies_with_a_call')} of {n} replies called it"  # noqa: E731
    table = [
        ["augmentation", f"{aug['rows']} stories: {stats['positions']} positions, {stats['sampled']} calls sampled, "
                         f"{stats['executed']} executed, {stats['kept']} kept; {aug['rows_with_calls']} stories "
                         f"with a call, {aug['seconds'] / 60:.1f} min"],
        ["SFT", f"{summary['steps']} steps, {summary['wall_time_s'] / 60:.1f} min"],
        [f"held-out 3-digit word problems (n={n}), base model, no tools", f"{base.accuracy:.0%}"],
        ["base model with the calculator", f"{before['accuracy']:.0%} ({calls(before)})"],
        ["after augmentation + SFT, with the calculator", f"{after['accuracy']:.0%} ({calls(after)})"],
        ["after augmentation + SFT, without it", f"{tuned.accuracy:.0%}"],
        ["tuned with the calculator / base without tools", f"{ratio:.1f}x (target: at least 2x)"],
    ]  # fmt: skip
    if gsm8k:
        table += [
            [f"GSM8K test solutions (n={gsm8k['texts']}), kept calls",
             f"{gsm8k['kept']} ({gsm8k['seconds'] / 60:.1f} min)"],
            ["kept calls within 2 tokens of a human annotation", f"{gsm8k['kept_near_human']} of {gsm8k['kept']}"],
            ["human annotations with a kept call within 2 tokens",
             f"{gsm8k['human_with_kept']} of {gsm8k['human_positions']}"],
        ]  # fmt: skip
    bars = {"base, no tools": base.accuracy, "base + calculator": before["accuracy"],
            "tuned, no tools": tuned.accuracy, "tuned + calculator": after["accuracy"]}  # fmt: skip
    write_report(args.out / "toolformer_arithmetic", report, ["figure", "value"], table, bars, "held-out accuracy")
    ui.summary_table("Toolformer on SmolLM2-135M: 3-digit word problems", [tuple(r) for r in table])


if __name__ == "__main__":
    main()
