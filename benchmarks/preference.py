"""Preference learning with the builtin SmolLM2-135M: a reward model on HH-RLHF, DPO on arithmetic pairs.

    python benchmarks/preference.py reward   # lowtune train reward on ../shared/data/hh-rlhf (CPU: ~40 min)
    python benchmarks/preference.py dpo      # lowtune train dpo on synthetic 2-digit addition pairs
    python benchmarks/preference.py dpo --run runs/dpo   # report on a finished run
    python benchmarks/preference.py dpo -- train.loss_type=sigmoid   # recipe overrides after --

reward: HH-RLHF harmless-base, the file in ../shared/data split by position: the last 500 rows are
held out (never trained on), the rest train; malformed pairs are skipped and counted. Reports
held-out pairwise accuracy before (random score head) and after, next to what reply length alone
predicts on the same pairs (a reward model that only learned "shorter is safer" would match it).

dpo: held-out 2-digit addition accuracy (greedy, 100 problems) before and after, the held-out
implicit-reward accuracy, and the curve of TRL's training metrics.

Writes benchmarks/results/<name>.{json,md,png} (name: reward_hh / dpo_arithmetic unless --name).
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

HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
SETUPS = {
    "reward": ("reward.yaml", [f"data.source={HH}", "data.max_rows=null", "data.heldout=500"], "reward_hh"),
    "dpo": ("dpo.yaml", [], "dpo_arithmetic"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=list(SETUPS))
    parser.add_argument("--run", type=Path, help="report on this finished run instead of training")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", help="file stem of the results")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for the training run")
    args = parser.parse_intermixed_args()  # overrides may come before or after the options
    recipe, overrides, name = SETUPS[args.method]
    run = args.run
    if run is None:
        run = train_run(ROOT / "recipes" / recipe, f"{args.method}-benchmark", [*overrides, *args.overrides])
    summary = json.loads((run / "summary.json").read_text())
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    report = {
        "benchmark": name if args.name is None else args.name,
        "machine": machine_info(),
        "run": str(run),
        "recipe": yaml.safe_load((run / "config.yaml").read_text()),
        "train_minutes": round(summary["wall_time_s"] / 60, 2),
        "steps": summary["steps"],
        "s_per_step": summary["s_per_step"],
        "peak_memory_mb": summary["peak_memory_mb"],
        "summary": summary,
    }
    if args.method == "reward":
        rows, curve_key, curve_label = reward_report(report, summary, logs), "accuracy", "training batch accuracy"
    else:
        rows, curve_key, curve_label = dpo_report(report, summary, logs), "rewards/accuracies", "implicit-reward acc."
    report["curve"] = [{"step": r["step"], **{k: v for k, v in r.items() if k != "step"}} for r in logs if "loss" in r]

    stem = args.out / report["benchmark"]
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Machine: {describe(report['machine'])}", "", "| figure | value |", "|---|---|"]
    stem.with_suffix(".md").write_text("\n".join(lines + [f"| {k} | {v} |" for k, v in rows]) + "\n")
    plot(report, stem, curve_key, curve_label)
    ui.summary_table(f"{report['benchmark']} (SmolLM2-135M)", rows)


def reward_report(report: dict, summary: dict, logs: list[dict]) -> list[tuple[str, str]]:
    from lowtune.config import load_recipe
    from lowtune.data import load_pairs

    recipe = load_recipe(None, ["method=reward", *[f"data.{k}={v}" for k, v in _data_overrides(report).items()]])
    from lowtune.scoring import RewardModel

    heldout = load_pairs(recipe.data).heldout
    lengths = [(len(r["chosen"][0]["content"]), len(r["rejected"][0]["content"])) for r in heldout]
    shorter = sum(c < r for c, r in lengths) / len(lengths)
    longer = sum(c > r for c, r in lengths) / len(lengths)
    # Does the model know more than "the shorter reply is safer"? Its accuracy where that rule fails.
    rm = RewardModel.load(report["run"], device="cpu")
    chosen = rm.score([r["prompt"] + r["chosen"] for r in heldout])
    rejected = rm.score([r["prompt"] + r["rejected"] for r in heldout])
    wins = [c > r for c, r in zip(chosen, rejected, strict=True)]
    against = [w for w, (lc, lr) in zip(wins, lengths, strict=True) if lc >= lr]
    along = [w for w, (lc, lr) in zip(wins, lengths, strict=True) if lc < lr]
    before, after = summary["pairwise_before"], summary["pairwise_after"]
    report.update(
        heldout_pairs=after["n"],
        pairwise_accuracy_before=before["accuracy"],
        pairwise_accuracy_after=after["accuracy"],
        pairwise_accuracy_rescored=sum(wins) / len(wins),
        shorter_reply_wins=shorter,
        longer_reply_wins=longer,
        pairs_where_shorter_loses=len(against),
        accuracy_where_shorter_loses=sum(against) / max(len(against), 1),
        accuracy_where_shorter_wins=sum(along) / max(len(along), 1),
        skipped_rows=len(summary["skipped_rows"]),
        truncated_sequences=summary["truncated_sequences"],
    )
    return [
        (f"held-out pairwise accuracy (n={after['n']})", f"{before['accuracy']:.1%} → {after['accuracy']:.1%}"),
        ("the same pairs, shorter reply wins / longer wins", f"{shorter:.1%} / {longer:.1%}"),
        (f"reward model where the chosen reply is the shorter (n={len(along)}) / is not (n={len(against)})",
         f"{report['accuracy_where_shorter_wins']:.1%} / {report['accuracy_where_shorter_loses']:.1%}"),
        ("training", f"{summary['rows']} pairs, 1 epoch, {summary['steps']} steps, {report['train_minutes']:.1f} min"),
        ("malformed pairs skipped / sequences cut to max_length",
         f"{len(summary['skipped_rows'])} / {summary['truncated_sequences']}"),
        ("s/step, peak memory", f"{summary['s_per_step']:.2f} s, {summary['peak_memory_mb'] / 1024:.1f} GiB"),
    ]  # fmt: skip


def _data_overrides(report: dict) -> dict:
    data = report["recipe"]["data"]
    return {k: data[k] for k in ("source", "heldout", "bad_rows", "split") if data.get(k) is not None}


def dpo_report(report: dict, summary: dict, logs: list[dict]) -> list[tuple[str, str]]:
    before, after, pref = summary["eval_before"], summary["eval_after"], summary["preference_after"]
    report.update(
        heldout_accuracy_before=before["accuracy"],
        heldout_accuracy_after=after["accuracy"],
        implicit_reward_accuracy=pref["accuracy"],
        loss_type=summary["loss_type"],
    )
    minutes, per_step = report["train_minutes"], summary["s_per_step"]
    return [
        (f"held-out 2-digit addition, greedy (n={before['n']})", f"{before['accuracy']:.0%} → {after['accuracy']:.0%}"),
        (f"held-out implicit-reward accuracy (n={pref['n']})",
         f"{pref['accuracy']:.1%}, margin {pref['mean_margin']:.2f}"),
        ("loss", f"{' + '.join(summary['loss_type'])}, beta {summary['beta']}"),
        ("training", f"{summary['steps']} steps, {minutes:.1f} min ({per_step:.2f} s/step)"),
        ("example reply after", after["example"].strip().replace("\n", " ")[:60]),
    ]  # fmt: skip


def plot(report: dict, stem: Path, key: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = [r for r in report["curve"] if key in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = [r["step"] for r in curve]
    ax1.plot(xs, [r["loss"] for r in curve])
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax2.plot(xs, [r[key] for r in curve], label=label)
    ax2.set_xlabel("step")
    ax2.set_ylabel(label)
    ax2.set_ylim(0, 1.05)
    fig.suptitle(f"{report['benchmark']}, SmolLM2-135M — {describe(report['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
