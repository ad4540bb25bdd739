"""GRPO alone (no SFT first) on 2-digit addition with the builtin SmolLM2-135M: accuracy and learning curve.

    python benchmarks/grpo_arithmetic.py                 # runs `lowtune train grpo` (about 20 min on 2 cores)
    python benchmarks/grpo_arithmetic.py --run runs/grpo # reports on a finished run

Held-out accuracy (greedy, 100 problems never trained on) before and after comes from the run's
summary.json; the learning curve (mean accuracy reward and mean completion length per step) from
its metrics.jsonl. Writes benchmarks/results/grpo_arithmetic.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine_info, train_run  # noqa: E402
from lowtune import ui  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="report on this finished run instead of training")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="grpo_arithmetic", help="file stem of the results")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for the training run")
    args = parser.parse_args()
    run = args.run
    if run is None:
        run = train_run(ROOT / "recipes" / "grpo.yaml", "grpo-benchmark", args.overrides)

    summary = json.loads((run / "summary.json").read_text())
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "reward" in r]
    curve = [
        {"step": r["step"], "reward": r["reward"], "accuracy_reward": r["rewards/accuracy_reward/mean"],
         "mean_length": r["completions/mean_length"],
         "clipped_ratio": r.get("completions/clipped_ratio")}
        for r in steps
    ]  # fmt: skip
    if not summary.get("eval_after"):
        raise SystemExit(f"{run} was trained with eval.task=null; the benchmark needs held-out accuracy")
    before, after = summary["eval_before"]["accuracy"], summary["eval_after"]["accuracy"]
    first, last = curve[: len(curve) // 5 or 1], curve[-(len(curve) // 5 or 1) :]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    report = {
        "benchmark": "grpo_arithmetic",
        "machine": machine_info(),
        "run": str(run),
        "recipe": yaml.safe_load((run / "config.yaml").read_text()),
        "train_minutes": summary["wall_time_s"] / 60,
        "steps": summary["steps"],
        "heldout_accuracy_before": before,
        "heldout_accuracy_after": after,
        "accuracy_reward_first_fifth": mean(first, "accuracy_reward"),
        "accuracy_reward_last_fifth": mean(last, "accuracy_reward"),
        "total_reward_first_fifth": mean(first, "reward"),
        "total_reward_last_fifth": mean(last, "reward"),
        "mean_length_first_fifth": mean(first, "mean_length"),
        "mean_length_last_fifth": mean(last, "mean_length"),
        "curve": curve,
    }
    stem = args.out / args.name
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [
        ("held-out 2-digit addition, greedy (n=100)", f"{before:.0%} → {after:.0%}"),
        ("training time", f"{report['train_minutes']:.1f} min, {summary['steps']} steps"),
        ("mean accuracy reward (first → last fifth of steps)",
         f"{report['accuracy_reward_first_fifth']:.2f} → {report['accuracy_reward_last_fifth']:.2f}"),
        ("weighted total reward (first → last fifth)",
         f"{report['total_reward_first_fifth']:.2f} → {report['total_reward_last_fifth']:.2f}"),
        ("mean completion length, tokens (first → last fifth)",
         f"{report['mean_length_first_fifth']:.0f} → {report['mean_length_last_fifth']:.0f}"),
    ]  # fmt: skip
    lines = [f"Machine: {describe(report['machine'])}", "", "| figure | value |", "|---|---|"]
    stem.with_suffix(".md").write_text("\n".join(lines + [f"| {k} | {v} |" for k, v in rows]) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = [r["step"] for r in curve]
    window = 5
    smooth = [mean(curve[max(0, i - window + 1) : i + 1], "accuracy_reward") for i in range(len(curve))]
    ax1.plot(xs, [r["accuracy_reward"] for r in curve], alpha=0.3, label="per step")
    ax1.plot(xs, smooth, label=f"mean of last {window}")
    ax1.set_xlabel("step")
    ax1.set_ylabel("accuracy reward (sampled)")
    ax1.set_title(f"held-out greedy accuracy {before:.0%} → {after:.0%}")
    ax1.legend()
    ax2.plot(xs, [r["mean_length"] for r in curve])
    ax2.set_xlabel("step")
    ax2.set_ylabel("mean completion length (tokens)")
    fig.suptitle(f"GRPO on SmolLM2-135M, 2-digit addition — {describe(report['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    ui.summary_table("GRPO alone on 2-digit addition (SmolLM2-135M)", rows)


if __name__ == "__main__":
    main()
