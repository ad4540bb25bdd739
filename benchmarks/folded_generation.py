"""Generation with the LoRA adapter folded into the weights (`lowtune.models.folded_lora`) against the adapter as
PEFT runs it, on the builtin SmolLM2-135M: the same model, fewer matmuls.

    python benchmarks/folded_generation.py --start-from DIR   # DIR: an r1 cold start (run or adapter directory)
    python benchmarks/folded_generation.py --steps 3 --sft-steps 3 --repeats 1 --out /tmp/x   # the code path

Two parts, each arm after the other, alone on the machine:

- `generation`: the two batches r1 generates, with each arm in turn (`--repeats` times, alternating; the median):
  a GRPO step's 2 prompts x 8 samples (temperature 0.8, 64 new tokens) and a held-out evaluation batch of 50
  problems (greedy, 96 new tokens). Every sequence runs to the full length (min_new_tokens), so both arms generate
  the same number of tokens. Reported: seconds, tokens per second, and for the greedy batch whether the folded arm
  wrote the same tokens.
- `r1 GRPO stage`: r1's GRPO stage continuing the cold start for `--steps` steps, `train.folded_generation` off
  and on, the same seed: seconds per step (from the second step), peak memory, steps with the same mean reward.

The adapter is `--start-from` (a trained cold start, as r1's GRPO stage sees it), or else r1's own cold start
trained here for `--sft-steps` steps. Writes benchmarks/results/folded_generation.{json,md,png}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.grpo_skip import agreement, measure, r1_stage_recipes  # noqa: E402
from benchmarks.machine import describe, machine_info, train_run, write_report  # noqa: E402

ARMS = {"off": "train.folded_generation=false", "on": "train.folded_generation=true"}


def generation_part(adapter: Path, repeats: int) -> dict:
    """Time r1's two generation batches with the adapter as PEFT runs it and folded."""
    import torch

    from lowtune import models
    from lowtune.config import load_recipe
    from lowtune.data import multistep

    recipe = load_recipe(ROOT / "recipes" / "r1.yaml")
    model, tokenizer, _ = models.load_adapter(adapter, device="cpu")
    tokenizer.padding_side = "left"
    batches = {  # name: (questions, samples each, sampling, new tokens)
        "GRPO step (2 prompts x 8 samples)": ([p.question for p in multistep.train(2, 1, 3, seed=5)], 8, True, 64),
        "evaluation (50 problems, greedy)": ([p.question for p in multistep.heldout(50, 1, 3)], 1, False, 96),
    }
    grpo_stage = recipe.stages[1].recipe.to_dict()["train"]
    assert recipe.eval.max_new_tokens == 96 and grpo_stage["max_completion_length"] == 64, "r1.yaml changed"
    results = {}
    for name, (questions, k, sample, new) in batches.items():
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                               add_generation_prompt=True) for q in questions]  # fmt: skip
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=sample, num_return_sequences=k, top_p=None,
                  top_k=None, temperature=0.8 if sample else None, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        seconds, outputs = {"off": [], "on": []}, {}
        for _ in range(repeats):
            for arm in ("off", "on"):
                torch.manual_seed(0)
                start = time.perf_counter()
                with torch.no_grad(), models.folded_lora(model, arm == "on"):
                    outputs[arm] = model.generate(**enc, **kw)
                seconds[arm].append(time.perf_counter() - start)
        tokens = len(questions) * k * new
        arms = {arm: {"seconds": statistics.median(s), "all_seconds": s, "tokens_per_s": tokens / statistics.median(s)}
                for arm, s in seconds.items()}  # fmt: skip
        results[name] = {
            "sequences": len(questions) * k,
            "new_tokens": new,
            "arms": arms,
            "speedup": arms["off"]["seconds"] / arms["on"]["seconds"],
            "same_tokens": bool(torch.equal(outputs["off"], outputs["on"])) if not sample else None,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start-from", type=Path, help="an r1 cold start (run or adapter directory)")
    parser.add_argument("--sft-steps", type=int, default=60, help="cold-start steps when there is no --start-from")
    parser.add_argument("--steps", type=int, default=12, help="GRPO steps per arm")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each generation batch per arm")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="folded_generation")
    args = parser.parse_args()
    from lowtune import runs, ui

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cold, stage = r1_stage_recipes(work, args.sft_steps)
        if args.start_from:
            start = args.start_from.resolve()
            (work / "runs").mkdir()
            (work / "runs" / "cold_start").symlink_to(start)
        else:
            ui.say(f"cold start: {args.sft_steps} SFT steps of the r1 recipe")
            start = train_run(cold, "cold_start", [f"output.dir={work / 'runs'}"])
        adapter = runs.find_adapter(str(start))
        ui.say(f"generation: {args.repeats} timings of each batch per arm")
        generation = generation_part(adapter, args.repeats)
        arms = {}
        for arm, switch in ARMS.items():
            ui.say(f"r1 GRPO stage: folded {arm}, {args.steps} steps")
            overrides = [f"train.max_steps={args.steps}", "train.save_steps=100000", f"output.dir={work / 'runs'}"]
            arms[arm] = measure(train_run(stage, f"grpo-{arm}", [*overrides, switch]))
    off, on = arms["off"], arms["on"]
    report = {
        "benchmark": args.name,
        "machine": machine_info(),
        "settings": {
            "start_from": str(args.start_from) if args.start_from else None,
            "sft_steps": args.sft_steps,
            "steps": args.steps,
            "repeats": args.repeats,
            "s_per_step_from_step": 2,
        },  # fmt: skip
        "generation": generation,
        "r1_grpo_stage": {"arms": arms, "speedup": off["s_per_step"] / on["s_per_step"], **agreement(off, on)},
    }
    columns = ["what", "folded", "seconds", "tokens/s", "speedup", "peak MiB", "same"]
    rows = []
    for name, g in generation.items():
        for arm, a in g["arms"].items():
            same = "" if arm == "off" or g["same_tokens"] is None else ("same tokens" if g["same_tokens"] else "differ")
            rows.append([name, arm, f"{a['seconds']:.2f}", f"{a['tokens_per_s']:.0f}",
                         f"{g['speedup']:.2f}x" if arm == "on" else "", "", same])  # fmt: skip
    grpo = report["r1_grpo_stage"]
    for arm, a in arms.items():
        rows.append([f"r1 GRPO stage, s/step ({a['steps']} steps)", arm, f"{a['s_per_step']:.2f}", "",
                     f"{grpo['speedup']:.2f}x" if arm == "on" else "", f"{a['peak_memory_mb']:,.0f}",
                     f"{grpo['steps_same_reward']} / {a['steps']} same reward" if arm == "on" else ""])  # fmt: skip
    bars = {f"{name.split(' (')[0]}, folded {arm}": a["seconds"] for name, g in generation.items()
            for arm, a in g["arms"].items()}  # fmt: skip
    bars |= {f"GRPO step, folded {arm}": a["s_per_step"] for arm, a in arms.items()}
    write_report(args.out / args.name, report, columns, rows, bars, "seconds")
    ui.table(f"{args.name} — {describe(report['machine'])}", columns, rows)
    print(f"wrote {args.out / args.name}.json, .md, .png")


if __name__ == "__main__":
    main()
