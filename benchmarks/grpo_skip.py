"""GRPO with and without `train.skip_zero_advantage` on the builtin SmolLM2-135M: the same steps, less compute.

    python benchmarks/grpo_skip.py                   # both cases (about 35 min on 2 cores)
    python benchmarks/grpo_skip.py --steps 4 --sft-steps 4 --out /tmp/x   # the code path in minutes

A group of completions that all scored the same has advantage 0 everywhere; with beta 0 and the `dapo` loss
(lowtune's GRPO defaults) leaving those completions out of the loss pass gives the same gradient
(lowtune.recipes.grpo). Two cases, each run twice from the same seed, skip on and skip off:

- `r1 GRPO stage`: the GRPO stage of `recipes/r1.yaml` continuing a cold start (the recipe's own SFT stage,
  `--sft-steps` steps), multi-step arithmetic, both at the linear learning-rate schedule they were measured with;
- `grpo recipe`: the shipped `grpo` recipe (2-digit addition) from the base model.

Reported per case and arm: seconds per step (from the second step on, so the first step's warm-up is left out),
the share of completions skipped, the peak memory of the process, and how closely the two arms agree (steps with
the same mean reward, the largest difference in loss). Writes benchmarks/results/grpo_skip.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine_info, s_per_step, train_run, write_report  # noqa: E402

ARMS = {"off": "train.skip_zero_advantage=false", "on": "train.skip_zero_advantage=true"}


def r1_stage_recipes(work: Path, sft_steps: int) -> tuple[Path, Path]:
    """The r1 pipeline's cold start (SFT, `sft_steps` steps) and its GRPO stage, each as a recipe of its own."""
    from lowtune.config import load_recipe

    pipeline = load_recipe(ROOT / "recipes" / "r1.yaml")
    paths = []
    for i, name in ((0, "cold_start"), (1, "grpo_stage")):
        recipe = pipeline.stages[i].recipe.to_dict()
        recipe.pop("stages", None)
        recipe["eval"]["task"] = None
        recipe.pop("budget", None)
        recipe["train"]["lr_scheduler_type"] = "linear"  # as measured (r1.yaml's stages decayed linearly then)
        if i == 0:
            recipe["train"]["max_steps"] = sft_steps
        else:
            recipe["lora"]["start_from"] = str(work / "runs" / "cold_start")
        paths.append(work / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(recipe, sort_keys=False))
    return paths[0], paths[1]


def measure(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward" in r]
    skipped = [r["completions/skipped"] for r in steps if "completions/skipped" in r]
    return {
        "steps": len(steps),
        "s_per_step": s_per_step(steps, 2),
        "skipped_share": sum(skipped) / len(skipped) if skipped else 0.0,
        "frac_reward_zero_std": sum(r["frac_reward_zero_std"] for r in steps) / len(steps),
        "peak_memory_mb": summary["peak_memory_mb"],
        "rewards": [r["reward"] for r in steps],
        "losses": [r["loss"] for r in steps],
        "run": str(run),
    }


def agreement(off: dict, on: dict) -> dict:
    """How closely the arms agree: steps whose mean reward is the same (the same samples scored alike) and the
    largest loss difference over those steps."""
    same = [i for i, (a, b) in enumerate(zip(off["rewards"], on["rewards"], strict=False)) if a == b]
    return {
        "steps_same_reward": len(same),
        "max_loss_diff_same_steps": max((abs(off["losses"][i] - on["losses"][i]) for i in same), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="GRPO steps per arm")
    parser.add_argument("--sft-steps", type=int, default=60, help="steps of the r1 cold start before its GRPO stage")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="grpo_skip")
    args = parser.parse_args()
    from lowtune import ui

    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        common = [f"train.max_steps={args.steps}", "train.save_steps=100000", f"output.dir={work / 'runs'}"]
        cold, stage = r1_stage_recipes(work, args.sft_steps)
        ui.say(f"cold start: {args.sft_steps} SFT steps of the r1 recipe")
        train_run(cold, "cold_start", [f"output.dir={work / 'runs'}"])
        plans = {
            "r1 GRPO stage": (stage, common),
            "grpo recipe": (ROOT / "recipes" / "grpo.yaml", [*common, "eval.task=null"]),
        }
        for case, (recipe, overrides) in plans.items():
            arms = {}
            for arm, switch in ARMS.items():
                ui.say(f"{case}: skip {arm}, {args.steps} steps")
                run = train_run(recipe, f"{case.split()[0]}-{arm}", [*overrides, switch])
                arms[arm] = measure(run)
            off, on = arms["off"], arms["on"]
            speedup = off["s_per_step"] / on["s_per_step"] if off["s_per_step"] and on["s_per_step"] else None
            cases[case] = {"arms": arms, "speedup": speedup, **agreement(off, on)}
    report = {
        "benchmark": args.name,
        "machine": machine_info(),
        "settings": {"steps": args.steps, "sft_steps": args.sft_steps, "s_per_step_from_step": 2},
        "cases": cases,
    }
    columns = ["case", "skip", "s/step", "skipped", "groups without signal", "peak MiB", "same reward steps",
               "max loss diff"]  # fmt: skip
    rows = []
    for case, c in cases.items():
        for arm, a in c["arms"].items():
            rows.append([case, arm, f"{a['s_per_step']:.2f}", f"{a['skipped_share']:.0%}",
                         f"{a['frac_reward_zero_std']:.0%}", f"{a['peak_memory_mb']:,.0f}",
                         f"{c['steps_same_reward']} / {a['steps']}" if arm == "on" else "",
                         f"{c['max_loss_diff_same_steps']:.1e}" if arm == "on" and c["max_loss_diff_same_steps"]
                         is not None else ""])  # fmt: skip
    bars = {f"{case}, skip {arm}": a["s_per_step"] for case, c in cases.items() for arm, a in c["arms"].items()}
    write_report(args.out / args.name, report, columns, rows, bars, "seconds per GRPO step")
    ui.table(f"{args.name} — {describe(report['machine'])}", columns, rows)
    print(f"wrote {args.out / args.name}.json, .md, .png")


if __name__ == "__main__":
    main()
