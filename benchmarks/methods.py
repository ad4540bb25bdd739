"""Compare the methods on one task, one base model and one training budget.

    python benchmarks/methods.py                        # 8 min of training per method (about 1 h 40 on 2 cores)
    python benchmarks/methods.py --minutes 4 --only sft dpo
    python benchmarks/methods.py --steps 60             # an optimizer-step budget instead of minutes
    python benchmarks/methods.py --quick                # every method for a few steps (a couple of minutes)
    python benchmarks/methods.py --quick --model tiny-random   # the harness test (tests/test_methods.py)
    python benchmarks/methods.py --merge benchmarks/results/methods_toolbox.json   # its rows into methods.*

Task: 2-digit addition; held-out set: the same `eval.n` problems for every method, never trained on,
greedy, answer = the last number of the reply. Each method runs its shipped recipe (recipes/*.yaml)
in a fresh process, with only the budget changed:

- minutes (default): every method trains until `--minutes` of training time are spent
  (`budget.minutes`; held-out evaluations excluded), at its recipe's learning rate held constant after
  warm-up (`constant_with_warmup`), so no schedule is cut short;
- `--steps N`: every method makes N optimizer steps with its recipe's schedule (`--constant-lr`: held
  constant after warm-up, as above) — a budget that other work on the machine cannot shrink.

Methods: sft, dpo (synthetic pairs), kto (the same pairs, unpaired), orpo (the same pairs), grpo, rloo,
online_dpo (accuracy rule as the reward), ppo (accuracy rule as the reward), ppo-rm (a reward adapter
trained first by `lowtune train reward` on the synthetic pairs, accuracy rule off; the reward model's
own training time is reported beside it, not charged to the budget), toolformer (the base annotates SFT
replies with calculator calls, then SFT on them; augmentation time counts in the budget; evaluated with
tool-augmented generation), sft-grpo (the pipeline recipe recipes/sft-grpo.yaml: SFT for half the budget, then GRPO
continuing the same adapter for the other half).
On request (`--only`): GRPO's loss variants, the grpo recipe with `train.loss_type` grpo, dr_grpo or dapo
(TRL's default, which the grpo row runs), and gspo (loss grpo, sequence-level importance sampling).

Per method: held-out accuracy before (measured once: one base, one set) and after, the held-out replies'
mean length in tokens (for methods that sample, also the sampled completions' mean length over training),
training time, tokens processed, peak memory of its process, trainable parameters, and the accuracy-vs-time curve
from evaluations every `--eval-every` minutes. Writes benchmarks/results/methods.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import (  # noqa: E402
    add_worker_arguments,
    describe,
    machine_info,
    markdown_table,
    merged_results,
    run_worker,
    serve_worker,
    settings_differ,
)

# The GRPO loss family (TRL's `loss_type`; GSPO is sequence-level importance sampling): the shipped grpo
# recipe with only these settings changed. "grpo" itself runs TRL's default loss, dapo.
GRPO_VARIANTS = {
    "grpo-loss-grpo": ["train.loss_type=grpo"],
    "grpo-loss-dr_grpo": ["train.loss_type=dr_grpo"],
    "grpo-loss-dapo": ["train.loss_type=dapo"],
    "gspo": ["train.loss_type=grpo", "train.importance_sampling_level=sequence"],
}
METHODS = ["sft", "dpo", "grpo", "ppo", "ppo-rm", "toolformer", "sft-grpo", "kto", "rloo", "orpo", "online_dpo"]
RECIPE = {"sft": "sft", "dpo": "dpo", "grpo": "grpo", "ppo": "ppo", "ppo-rm": "ppo", "toolformer": "sft", "kto": "kto",
          "rloo": "rloo", "orpo": "orpo", "online_dpo": "online_dpo"}  # fmt: skip
RECIPE |= dict.fromkeys(GRPO_VARIANTS, "grpo")
# Toolformer: the share of the budget that augmentation may take before SFT starts.
AUGMENT_SHARE = 0.4


# ---------------------------------------------------------------- workers (each in its own process)


def common_overrides(cfg: dict, minutes: float | None, workdir: Path) -> list[str]:
    """What every method's recipe gets: the base, the held-out set, the budget, the output place."""
    out = [
        f"model.name={cfg['model']}",
        f"eval.n={cfg['n']}",
        f"eval.max_new_tokens={cfg['max_new_tokens']}",
        "eval.before=false",  # measured once for all methods
        f"output.dir={workdir}",
        "output.quiet=true",
    ]
    if cfg["eval_every"]:
        out.append(f"eval.every_minutes={cfg['eval_every']}")
    if cfg["steps"]:
        out.append(f"train.max_steps={cfg['steps']}")
        if cfg.get("constant_lr"):
            out.append("train.lr_scheduler_type=constant_with_warmup")
    else:
        out += [f"budget.minutes={minutes}", "train.max_steps=100000", "train.lr_scheduler_type=constant_with_warmup"]
    return out + cfg.get("extra", []) + cfg.get("set", [])


# A pipeline's settings that belong to each stage (a stage's own sections win over the pipeline's); the rest
# (model, held-out set size, output) are the pipeline's.
STAGE_KEYS = ("train.", "budget.", "eval.every_minutes", "eval.before")


def staged(overrides: list[str], stage: int) -> list[str]:
    """`overrides` for a pipeline's stage `stage`: its per-stage settings prefixed `stages.<stage>.`, the others as
    they are (given once, for stage 1)."""
    own = [f"stages.{stage}.{o}" for o in overrides if o.startswith(STAGE_KEYS)]
    return own + ([o for o in overrides if not o.startswith(STAGE_KEYS)] if stage == 1 else [])


def train(recipe: str, overrides: list[str]) -> tuple[Any, dict]:
    from lowtune import recipes
    from lowtune.config import load_recipe

    run, summary = recipes.train(load_recipe(ROOT / "recipes" / f"{recipe}.yaml", overrides))
    return run, {**summary, "completion_tokens": completion_tokens(run.path)}


def completion_tokens(run_dir: Path) -> float | None:
    """Methods that sample (GRPO, RLOO): the mean length of the sampled completions over training, in tokens."""
    metrics = run_dir / "metrics.jsonl"
    logged = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    lengths = [m["completions/mean_length"] for m in logged if "completions/mean_length" in m]
    return sum(lengths) / len(lengths) if lengths else None


def part(summary: dict, name: str) -> dict:
    """The figures of one training run that the table needs."""
    keys = ("steps", "wall_time_s", "eval_time_s", "tokens", "peak_memory_mb", "trainable_params", "eval_during",
            "completion_tokens")  # fmt: skip
    return {"name": name, **{k: summary.get(k) for k in keys}, "eval_after": summary.get("eval_after")}


def worker(method: str, cfg: dict, workdir: Path) -> dict:
    minutes = cfg["minutes"]
    if method == "base":
        return base_accuracy(cfg)
    if method == "reward":
        _, summary = train("reward", reward_overrides(cfg, workdir))
        return {"parts": [part(summary, "reward")], "pairwise": summary.get("pairwise_after")}
    if method == "sft-grpo":  # the pipeline recipe: each stage half the budget, GRPO continuing SFT's adapter
        half = None if minutes is None else minutes / 2
        extra = {1: cfg.get("sft_extra", []), 2: cfg.get("grpo_extra", [])}
        overrides = [o for stage in (1, 2) for o in staged(common_overrides({**cfg, "extra": extra[stage]}, half,
                                                                             workdir), stage)]  # fmt: skip
        run, summary = train("sft-grpo", overrides)
        return {"parts": [part({**s, "completion_tokens": completion_tokens(run.path / s["dir"])}, s["method"])
                          for s in summary["stages"]]}  # fmt: skip
    if method == "toolformer":
        return toolformer(cfg, workdir)
    _, summary = train(
        RECIPE[method], common_overrides({**cfg, "extra": method_overrides(method, cfg)}, minutes, workdir)
    )
    return {"parts": [part(summary, method)]}


def method_overrides(method: str, cfg: dict) -> list[str]:
    """What a method changes in its shipped recipe beyond the common budget: a GRPO variant's loss, the quick
    mode's small sizes (`<method>_extra`; the variants take grpo's), PPO-RM's reward model."""
    variant = GRPO_VARIANTS.get(method)
    extra = [*(variant or []), *cfg.get("grpo_extra" if variant else f"{method}_extra", [])]
    if method == "ppo-rm":
        extra += [f"rewards.model={cfg['reward_run']}", "rewards.accuracy=0"]
    return extra


def base_accuracy(cfg: dict) -> dict:
    from lowtune import evaluate, models
    from lowtune.config import ModelConfig

    model, tokenizer = models.load(ModelConfig(name=cfg["model"]))
    began = time.perf_counter()
    result = evaluate.arithmetic_accuracy(model, tokenizer, n=cfg["n"], max_new_tokens=cfg["max_new_tokens"])
    return {"accuracy": result.accuracy, "n": result.n, "seconds": round(time.perf_counter() - began, 1),
            "example": result.examples[0][1]}  # fmt: skip


def reward_overrides(cfg: dict, workdir: Path) -> list[str]:
    """The reward model PPO-RM scores with: `lowtune train reward` on the same synthetic pairs as DPO."""
    return [
        f"model.name={cfg['model']}",
        "data.source=arithmetic",
        "data.data_dir=null",
        "data.max_rows=null",
        "data.heldout=null",
        "data.bad_rows=error",
        f"train.max_steps={cfg['reward_steps']}",
        f"output.dir={workdir}",
        "output.name=reward",
        "output.quiet=true",
    ]


def toolformer(cfg: dict, workdir: Path) -> dict:
    """Augment SFT replies with calculator calls (as long as the budget allows), then SFT on them."""
    import torch

    from lowtune import models, ui
    from lowtune.config import ModelConfig
    from lowtune.data import arithmetic
    from lowtune.toolformer.augment import Augmenter
    from lowtune.tools import Calculator

    torch.manual_seed(0)
    base, tokenizer = models.load(ModelConfig(name=cfg["model"]))
    base.eval()
    augmenter = Augmenter(base, tokenizer, [Calculator()], dict(top_k=cfg["tool_top_k"], samples=cfg["tool_samples"]))
    problems = arithmetic.train(cfg["tool_rows"], 2, ["+"], seed=0)
    limit = None if cfg["minutes"] is None else cfg["minutes"] * 60 * AUGMENT_SHARE
    rows, began = [], time.perf_counter()
    with ui.progress_bar("augment", len(problems)) as advance:
        for p in problems:
            if limit is not None and time.perf_counter() - began > limit:
                break
            annotated = augmenter.augment_one(p.solution).annotated  # unchanged when no call is kept
            rows.append({"messages": [{"role": "user", "content": p.question},
                                      {"role": "assistant", "content": annotated}]})  # fmt: skip
            advance()
    augment_s = time.perf_counter() - began
    del base
    data = workdir / "toolformer.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = augmenter.stats["Calculator"]
    left = None if cfg["minutes"] is None else max(cfg["minutes"] - augment_s / 60, 0.1)
    extra = [f"data.source={data}", "data.format=messages", "eval.tools=[calculator]", *cfg.get("toolformer_extra", [])]
    _, summary = train("sft", common_overrides({**cfg, "extra": extra}, left, workdir))
    with_calls = [r["messages"][1]["content"] for r in rows if "[Calculator(" in r["messages"][1]["content"]]
    return {
        "parts": [{"name": "augment", "wall_time_s": round(augment_s, 2)}, part(summary, "sft")],
        "augmentation": {
            "rows": len(rows),
            "positions": stats.positions,
            "sampled": stats.sampled,
            "executed": stats.executed,
            "kept": stats.kept,
            "rows_with_a_call": len(with_calls),
            "examples": with_calls[:5],
        },  # fmt: skip
    }


# ---------------------------------------------------------------- the harness


def summarize(method: str, result: dict, base: dict) -> dict:
    """One row of the table: totals over the method's parts, and its accuracy-vs-time curve."""
    if "error" in result:
        return {"method": method, "error": result["error"], "log_tail": result.get("log_tail")}
    parts = result["parts"]
    trained = [p for p in parts if "steps" in p]
    curve, offset = [{"minutes": 0.0, "accuracy": base["accuracy"]}], 0.0
    for p in parts:
        if "steps" in p:
            curve += [{"minutes": (offset + c["train_time_s"]) / 60, "accuracy": c["accuracy"]}
                      for c in p["eval_during"] or []]  # fmt: skip
            if p["eval_after"]:
                curve.append({"minutes": (offset + p["wall_time_s"]) / 60, "accuracy": p["eval_after"]["accuracy"]})
        offset += p["wall_time_s"]
    after = trained[-1]["eval_after"] or {}
    return {
        "method": method,
        "accuracy_before": base["accuracy"],
        "accuracy_after": after.get("accuracy"),
        "replies_with_a_call": after.get("replies_with_a_call"),
        "minutes": offset / 60,
        "steps": sum(p["steps"] for p in trained),
        "tokens": sum(p["tokens"] or 0 for p in trained),
        "peak_memory_mb": max(p["peak_memory_mb"] for p in trained),
        "trainable_params": max(p["trainable_params"] for p in trained),
        "eval_minutes": sum(p["eval_time_s"] for p in trained) / 60,
        "reply_tokens": after.get("mean_reply_tokens"),  # held-out replies, after training
        "completion_tokens": trained[-1].get("completion_tokens"),  # sampled during training (GRPO, RLOO)
        "curve": curve,
        "parts": parts,
        **{k: result[k] for k in ("augmentation", "reward_model") if k in result},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--only", nargs="+", choices=[*METHODS, *GRPO_VARIANTS],
                        help=f"a subset of the methods, or GRPO's variants ({', '.join(GRPO_VARIANTS)})")  # fmt: skip
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=8.0, help="training minutes per method (default)")
    budget.add_argument("--steps", type=int, help="optimizer steps per method instead of minutes")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every method (e.g. train.beta=0.5): a tuning study")  # fmt: skip
    parser.add_argument(
        "--constant-lr",
        action="store_true",
        help="with --steps: hold each recipe's learning rate after warm-up, as the minutes budget does",
    )
    parser.add_argument("--eval-every", type=float, help="minutes between held-out evaluations (default: budget/3)")
    parser.add_argument("--n", type=int, default=100, help="held-out problems")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--reward-steps", type=int, default=100, help="training steps of ppo-rm's reward model")
    parser.add_argument("--quick", action="store_true", help="a few steps per method: checks the harness")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="methods", help="file stem of the results")
    parser.add_argument(
        "--update",
        action="store_true",
        help="re-measure --only's methods into the existing results (same settings; the base model's score kept; "
        "a row measured on another machine says which)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: copy the rows of these results (same settings) into --name's, one table and plot "
        "for all; a row from another machine says which, a row of the same method is replaced",
    )
    add_worker_arguments(parser)
    args = parser.parse_args()
    if serve_worker(args, worker):
        return

    from lowtune import builtin, ui

    if args.merge:
        stem = args.out / args.name
        report = merged(stem, args.merge)
        write(stem, report)
        ui.table("Methods on 2-digit addition, " + describe(report["machine"]), COLUMNS, table_rows(report))
        return
    methods = args.only or METHODS
    steps = args.steps
    cfg: dict[str, Any] = {
        "model": args.model,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "minutes": None if steps else args.minutes,
        "steps": steps,
        "constant_lr": args.constant_lr,
        "set": args.set,
        "eval_every": args.eval_every if args.eval_every is not None else (None if steps else args.minutes / 3),
        "reward_steps": args.reward_steps,
        "tool_rows": 2000,
        "tool_top_k": 5,
        "tool_samples": 3,
    }
    if args.quick:  # every method briefly, every code path (periodic evaluation included) exercised
        cfg |= {"minutes": None, "steps": 2, "eval_every": 1e-4, "n": 4, "max_new_tokens": 8, "reward_steps": 2,
                "tool_rows": 3, "tool_top_k": 2, "tool_samples": 1}  # fmt: skip
        cfg["grpo_extra"] = ["train.max_completion_length=8", "train.num_generations=2",
                             "train.per_device_train_batch_size=2"]  # fmt: skip
        cfg["ppo_extra"] = cfg["ppo-rm_extra"] = ["train.max_new_tokens=8", "train.per_device_train_batch_size=2",
                                                  "train.num_mini_batches=1", "train.num_ppo_epochs=1"]  # fmt: skip
        cfg["dpo_extra"] = cfg["kto_extra"] = cfg["orpo_extra"] = ["train.per_device_train_batch_size=2"]
        cfg["rloo_extra"] = cfg["grpo_extra"]
        cfg["online_dpo_extra"] = ["train.max_new_tokens=8", "train.per_device_train_batch_size=2"]
    if args.model in builtin.BUILTINS:
        builtin.ensure(args.model, ui.say)  # converted once, before any timing
    what = f"{cfg['steps']} steps" if cfg["steps"] else f"{cfg['minutes']:g} min"
    ui.say(f"{len(methods)} methods on {args.model}, {what} each; held-out n={cfg['n']}")

    machine, stem = machine_info(), args.out / args.name
    report = earlier_report(stem, cfg) if args.update else {"benchmark": "methods", "machine": machine,
                                                            "settings": cfg, "methods": {}}  # fmt: skip
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base = report.get("base") or run_worker(__file__, "base", cfg, workdir)
        if "error" in base:
            raise SystemExit(f"the base model's evaluation failed:\n{base['log_tail']}")
        report["base"] = base
        ui.say(f"base model: {base['accuracy']:.0%} held-out ({base['seconds']:.0f} s)")
        for method in methods:
            extra = {}
            if method == "ppo-rm":
                reward = run_worker(__file__, "reward", cfg, workdir)
                if "error" in reward:
                    report["methods"][method] = {"method": method, "error": "reward model: " + reward["error"],
                                                 "log_tail": reward.get("log_tail")}  # fmt: skip
                    continue
                rm = reward["parts"][0]
                extra = {"reward_run": str(workdir / "reward"),
                         "reward_model": {"minutes": rm["wall_time_s"] / 60, "steps": rm["steps"],
                                          "pairwise_accuracy": (reward["pairwise"] or {}).get("accuracy")}}  # fmt: skip
            ui.say(f"{method} ...")
            result = run_worker(__file__, method, {**cfg, **extra}, workdir)
            if "reward_model" in extra:
                result["reward_model"] = extra["reward_model"]
            row = summarize(method, result, base)
            if machine != report["machine"]:
                row["machine"] = machine
            report["methods"][method] = row
            shown = f"{row['accuracy_after']:.0%}" if row.get("accuracy_after") is not None else row.get("error")
            ui.say(f"{method}: {shown} after {row.get('minutes', 0):.1f} min")
            report["total_minutes"] = (time.perf_counter() - began) / 60
            write(stem, report)  # after every method: a crash later keeps what was measured
    ui.table("Methods on 2-digit addition, " + describe(report["machine"]), COLUMNS, table_rows(report))


COLUMNS = ["method", "held-out accuracy", "reply tokens", "train min", "steps", "tokens", "peak MiB",
           "trainable params"]  # fmt: skip


def earlier_report(stem: Path, cfg: dict) -> dict:
    """`--update`: the results at `stem` to measure some methods again into; an error when there are none or their
    settings differ from these (the rows would not compare)."""
    path = stem.with_suffix(".json")
    if not path.is_file():
        raise SystemExit(f"--update: {path} does not exist; run without --update first")
    report = json.loads(path.read_text())
    differ = settings_differ(cfg, report["settings"])
    if differ:
        raise SystemExit(f"--update: {path} was measured with other settings ({', '.join(differ)}); use the same ones")
    return report


def merged(stem: Path, sources: list[Path]) -> dict:
    """`--merge`: the results at `stem` with the rows of `sources` added (or replacing rows of the same method)."""
    return merged_results(stem, sources, "methods")


# transformers counts the tokens of a batch's `input_ids`; ORPO's batches have chosen_/rejected_input_ids and online
# DPO generates its own, so neither trainer reports how many it processed.
NOT_COUNTED = "not counted"


def label(method: str, row: dict) -> str:
    """The row's name, with its machine when it was measured on another one than the report's (--update, --merge)."""
    return f"{method} ({describe(row['machine']).split(';')[0]})" if "machine" in row else method


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for method, r in report["methods"].items():
        if "error" in r:
            rows.append([method, f"failed: {r['error']}", "", "", "", "", "", ""])
            continue
        after = "n/a" if r["accuracy_after"] is None else f"{r['accuracy_after']:.0%}"
        reply = "–" if r.get("reply_tokens") is None else f"{r['reply_tokens']:.1f}"  # –: not recorded
        if r.get("completion_tokens") is not None:  # and what it sampled while training
            reply += f" (training: {r['completion_tokens']:.1f})"
        method = label(method, r)
        tokens = f"{r['tokens']:,}" if r["tokens"] else NOT_COUNTED
        rows.append([method, f"{r['accuracy_before']:.0%} → {after}", reply, f"{r['minutes']:.1f}", str(r["steps"]),
                     tokens, f"{r['peak_memory_mb']:,.0f}", f"{r['trainable_params']:,}"])  # fmt: skip
    return rows


def write(stem: Path, report: dict) -> None:
    """stem.json, stem.md (the table, with the machine and the budget) and stem.png (two panels)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    s = report["settings"]
    budget = f"{s['steps']} optimizer steps" if s["steps"] else f"{s['minutes']:g} min of training"
    budget += " (learning rate constant after warm-up)" if s.get("constant_lr") else ""
    budget += f"; every recipe with {', '.join(s['set'])}" if s.get("set") else ""
    lines = [
        f"Machine: {describe(report['machine'])}. Budget: {budget} per method; held-out 2-digit addition, "
        f"n={s['n']}, greedy; base model {report['base']['accuracy']:.0%}.",
        "",
        *markdown_table(COLUMNS, table_rows(report)),
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {m: r for m, r in report["methods"].items() if "error" not in r}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax1.bar([label(m, r) for m, r in done.items()], [r["accuracy_after"] or 0 for r in done.values()], color="#2a7")
    ax1.axhline(report["base"]["accuracy"], color="#888", ls="--", label="base model")
    ax1.set_ylabel("held-out accuracy after training")
    ax1.tick_params(axis="x", labelrotation=30, labelsize=8)
    plt.setp(ax1.get_xticklabels(), ha="right")
    ax1.legend()
    colors = plt.get_cmap("tab20").colors  # more rows than the default cycle's 10 colours
    for i, (method, r) in enumerate(done.items()):
        curve = r["curve"]
        ax2.plot([c["minutes"] for c in curve], [c["accuracy"] for c in curve], marker="o", label=label(method, r),
                 color=colors[2 * i % 20 + 2 * i // 20 % 2])  # fmt: skip
    ax2.set_xlabel("training minutes (evaluations excluded)")
    ax2.set_ylabel("held-out accuracy")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"Methods on 2-digit addition, {budget} each — {describe(report['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
