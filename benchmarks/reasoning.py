"""Reasoning the R1 way on multi-step arithmetic: which training gets a small model to work problems out.

    python benchmarks/reasoning.py                      # 10 min of training per arm (about 1 h 30 on 2 cores)
    python benchmarks/reasoning.py --minutes 20 --only cold_start_sft r1
    python benchmarks/reasoning.py --as-shipped --n 500  # `lowtune train r1` as shipped, scored (about 50 min)
    python benchmarks/reasoning.py --quick --model tiny-random   # the harness test (tests/test_reasoning_bench.py)

Task: the builtin multistep problems ("What is 8 + 4 × 3 × 3?"), trained on 4 operands of one digit (the recipes'
`data.digits`; a step can still reach hundreds, 8 × 28 = 224). Every arm trains for the
same `--minutes` of training time (held-out evaluations excluded; rejection sampling's sampling counted), each stage
at its recipe's learning rate held constant after warm-up, and is then scored greedily on held-out problems never
trained on: 4 operands (`--n`, the headline), 3 and 5 operands (`--n-level` each).

Arms (recipes/r1.yaml and recipes/r1-zero.yaml, only the budget changed, and with a budget in minutes the problems
rejection sampling samples: as many per minute as the shipped stage's, RS_MINUTES):
- base: the base model, asked for the think/answer format by the system prompt (no training);
- direct_sft: SFT on the answers alone (`<answer>57</answer>`, r1's first stage with `data.traces=false`);
- cold_start_sft: SFT on worked traces (`<think>14 × 3 = 42. …</think><answer>57</answer>`), r1's first stage;
- cold_start_grpo: r1's first two stages, half the budget SFT, half GRPO (accuracy + format rewards);
- r1: all three stages: cold start (50%), GRPO (20%), rejection sampling (30%: sampling + SFT on the kept samples);
- r1_zero: GRPO straight from the base, the format asked for by the system prompt;
- cold_start_grpo_length: cold_start_grpo with the cosine length reward at `--length-weight` (the length study);
- grpo_only, rs_only, grpo_rs: r1's GRPO stage, its rejection-sampling stage, or both (40 : 60, r1's 20 : 30), from
  `--start-from`'s adapter (a study of r1's later stages from one checkpoint).

`--as-shipped` runs r1 (or r1_zero) as its recipe is shipped instead, its own steps and schedule: `lowtune train r1`
as a user runs it, scored as every arm.

`--start-from RUN` starts every trained arm from that run's adapter, trained further (`lora.start_from`), and the base
arm scores that adapter: from one cold-start checkpoint, cold_start_sft is SFT continued and grpo_only GRPO instead,
each for `--minutes` (`--keep-runs DIR` keeps the runs, the checkpoint among them).

Per arm: held-out accuracy, format adherence (replies exactly `<think>…</think><answer>…</answer>`), mean think length
(tokens inside `<think>`, of the replies that have one) and reply length, each per number of operands; training
minutes and steps per stage; the accuracy-vs-minutes curve (the recipe's periodic evaluations, `--n-curve` problems;
with `--as-shipped` the recipe's own);
GRPO's per-step completion length and rewards. Writes benchmarks/results/reasoning.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

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
)

ARMS = ["base", "cold_start_sft", "direct_sft", "cold_start_grpo", "r1", "r1_zero", "cold_start_grpo_length",
        "grpo_only", "rs_only", "grpo_rs"]  # fmt: skip
# Each arm: the recipe, the stages it runs (from the first listed, 0-based), and each stage's share of the budget.
PLAN = {
    "direct_sft": ("r1", 0, [1.0]),
    "cold_start_sft": ("r1", 0, [1.0]),
    # GRPO starts where SFT on the traces levels off (half the budget: benchmarks/results/reasoning_runs/sft300.json's
    # curve levels off from minute 5 of 10), as R1's RL starts from a converged cold start
    "cold_start_grpo": ("r1", 0, [0.5, 0.5]),
    "cold_start_grpo_length": ("r1", 0, [0.5, 0.5]),
    "r1": ("r1", 0, [0.5, 0.2, 0.3]),  # rejection sampling's sampling, a slow part on a CPU, counts in its share
    "r1_zero": ("r1-zero", 0, [1.0]),
    # only with --start-from: r1's later stages from a cold start trained before
    "grpo_only": ("r1", 1, [1.0]),
    "rs_only": ("r1", 2, [1.0]),
    "grpo_rs": ("r1", 1, [0.4, 0.6]),  # r1's GRPO and rejection sampling in r1's proportion (20 : 30)
}
FROM_CHECKPOINT = {arm for arm, (_, first, _) in PLAN.items() if first > 0}  # they need a cold start (--start-from)
AS_SHIPPED = {"r1", "r1_zero"}  # the arms that are a whole shipped recipe (--as-shipped)
# The minutes r1's rejection-sampling stage takes on a 2-core CPU as shipped (its problems and steps are what 18
# minutes sampled and trained in the study, sampling about half: recipes/r1.yaml); an arm budgeted in minutes samples
# problems in proportion to its stage's minutes, at the shipped stage's rate (`rs_problems_per_minute` in settings).
RS_MINUTES = 18.0
LEVELS = (2, 3, 4)  # steps per problem: 3, 4 and 5 operands
DIGITS = yaml.safe_load((ROOT / "recipes" / "r1.yaml").read_text())["data"]["digits"]  # the recipes' problems
HEADLINE = 3
_THINK = re.compile(r"<think>(.*?)</think>", re.S)


# ---------------------------------------------------------------- workers (each in its own process)


def shipped(arm: str) -> dict:
    """The arm's recipe as shipped, cut to the arm's stages."""
    name, first, shares = PLAN[arm]
    raw = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
    if "stages" in raw:
        raw["stages"] = raw["stages"][first : first + len(shares)]
    return raw


def rs_problems_per_minute() -> float:
    """The problems r1's rejection-sampling stage samples per minute of its stage, as shipped (RS_MINUTES)."""
    stage = next(s for s in shipped("r1")["stages"] if s["method"] == "rejection_sampling")
    return stage["data"]["n_train"] / RS_MINUTES


def recipe_file(arm: str, workdir: Path) -> Path:
    """The arm's recipe: the shipped one, cut to the arm's stages."""
    raw = shipped(arm)
    path = workdir / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def overrides(arm: str, cfg: dict, workdir: Path, pipeline: bool) -> list[str]:
    """The budget and the place: each stage its share of the minutes (or of the steps), the curve's evaluations."""
    _, _, shares = PLAN[arm]
    out = [f"model.name={cfg['model']}", f"output.dir={workdir}", f"output.name={arm}", "output.quiet=true"]
    if cfg.get("start_from"):
        out.append(f"lora.start_from={cfg['start_from']}")
    if cfg.get("as_shipped"):  # the recipe a user runs: its own steps, schedule and evaluations
        return out + cfg.get("set", [])
    stages = shipped(arm).get("stages", [])
    for i, share in enumerate(shares, 1):
        at = f"stages.{i}." if pipeline else ""
        out += [f"{at}eval.n={cfg['n_curve']}", f"{at}eval.max_new_tokens={cfg['max_new_tokens']}",
                f"{at}eval.before=false", f"{at}train.lr_scheduler_type=constant_with_warmup"]  # fmt: skip
        if cfg["steps"]:
            out.append(f"{at}train.max_steps={max(1, round(cfg['steps'] * share))}")
        else:
            out += [f"{at}budget.minutes={cfg['minutes'] * share:.3f}", f"{at}train.max_steps=100000"]
            stage = stages[i - 1] if pipeline else {}
            if stage.get("method") == "rejection_sampling" and cfg.get("rs_problems_per_minute"):
                prompts = cfg["rs_problems_per_minute"] * cfg["minutes"] * share  # in proportion to its minutes
                out.append(f"{at}data.n_train={max(1, round(prompts))}")
        if cfg["eval_every"]:
            out.append(f"{at}eval.every_minutes={cfg['eval_every']}")
    if arm == "direct_sft":
        out.append("stages.1.data.traces=false")
    if arm == "cold_start_grpo_length":
        out.append(f"stages.2.rewards.length={cfg['length_weight']}")
    return out + cfg.get("set", [])


def score(model, tokenizer, cfg: dict, system_prompt: str | None) -> dict:
    """Held-out accuracy, format adherence and lengths at each level (3, 4 and 5 operands)."""
    from lowtune import evaluate
    from lowtune.data import multistep
    from lowtune.rewards import extract_answer, format_reward, to_number

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    levels = {}
    for steps in cfg["levels"]:
        n = cfg["n"] if steps == HEADLINE else cfg["n_level"]
        problems = multistep.heldout(n, cfg["digits"], steps)
        began = time.perf_counter()
        result = evaluate.accuracy(model, tokenizer, problems, cfg["max_new_tokens"], cfg["batch_size"], system_prompt)
        replies = [reply for _, reply, _ in result.examples]
        right = [to_number(extract_answer(r)) == p.answer for p, r in zip(problems, replies, strict=True)]
        thinks = [tokens(m.group(1)) for m in (_THINK.search(r) for r in replies) if m]
        lengths = [tokens(r) for r in replies]
        correct_lengths = [t for t, ok in zip(lengths, right, strict=True) if ok]
        levels[str(steps + 1)] = {
            "operands": steps + 1,
            "n": n,
            "accuracy": sum(right) / n,
            "format": sum(format_reward(replies)) / n,
            "think_tokens": sum(thinks) / len(thinks) if thinks else None,  # of the replies with a <think>
            "with_think": len(thinks),
            "reply_tokens": sum(lengths) / n,
            "correct_reply_tokens": sum(correct_lengths) / len(correct_lengths) if correct_lengths else None,
            "seconds": round(time.perf_counter() - began, 1),
            "examples": [
                {"question": p.question, "reply": r, "answer": p.answer}
                for p, r in list(zip(problems, replies, strict=True))[:3]
            ],  # fmt: skip
        }
    return levels


def reference_think_tokens(cfg: dict) -> dict[str, float]:
    """Per number of operands, the mean length in tokens of the worked traces of the held-out problems scored (what
    a reply's think part would hold if it worked each problem out as the cold-start data does)."""
    from lowtune import models
    from lowtune.data import multistep

    tokenizer = models.load_tokenizer(models.resolve_path(cfg["model"]))
    out = {}
    for steps in cfg["levels"]:
        problems = multistep.heldout(cfg["n"] if steps == HEADLINE else cfg["n_level"], cfg["digits"], steps)
        lengths = [len(tokenizer(p.trace, add_special_tokens=False)["input_ids"]) for p in problems]
        out[str(steps + 1)] = sum(lengths) / len(lengths)
    return out


def grpo_steps(stage_dir: Path) -> list[dict]:
    """Per GRPO step: completion length and rewards, from the stage's metrics.jsonl (TRL's logged names)."""
    metrics = stage_dir / "metrics.jsonl"
    names = {"completions/mean_length": "completion_tokens", "reward": "reward",
             "rewards/accuracy_reward/mean": "accuracy", "rewards/format_reward/mean": "format",
             "rewards/length_reward/mean": "length", "rewards/think_tokens/mean": "think_tokens"}  # fmt: skip
    logged = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return [{"step": m["step"], **{ours: m[theirs] for theirs, ours in names.items() if theirs in m}}
            for m in logged if "completions/mean_length" in m]  # fmt: skip


def worker(arm: str, cfg: dict, workdir: Path) -> dict:
    from lowtune import models, recipes
    from lowtune.config import ModelConfig, load_recipe
    from lowtune.config.schema import REASONING_PROMPT

    if arm == "base" and cfg.get("start_from"):  # the starting point: the adapter, prompted as it was trained
        model, tokenizer, _ = models.load_for_inference(cfg["start_from"])
        return {"levels": score(model, tokenizer, cfg, load_recipe(recipe_file("r1", workdir)).system_prompt())}
    if arm == "base":
        model, tokenizer = models.load(ModelConfig(name=cfg["model"]))
        return {"levels": score(model.eval(), tokenizer, cfg, REASONING_PROMPT)}
    path = recipe_file(arm, workdir)
    pipeline = "stages" in yaml.safe_load(path.read_text())
    settings = overrides(arm, cfg, workdir, pipeline)
    if cfg["quick"]:  # --smoke's sizes (short samples, few rows), then the curve's evaluations still on
        settings += recipes.smoke_overrides(load_recipe(path, settings))
        settings += [f"stages.{i}.eval.every_minutes=1e-4" if pipeline else "eval.every_minutes=1e-4"
                     for i in range(1, len(PLAN[arm][2]) + 1)]  # fmt: skip
    recipe = load_recipe(path, settings)
    run, summary = recipes.train(recipe)
    summary = summary.to_dict()
    stages = summary.get("stages") or [{"stage": 1, "method": summary["method"], "dir": ".", **summary}]
    parts = []
    for s in stages:
        sampling = s.get("sampling") or {}
        parts.append({
            "stage": s["stage"], "method": s["method"], "steps": s["steps"], "wall_time_s": s["wall_time_s"],
            "sampling_s": sampling.get("seconds", 0.0), "eval_time_s": s.get("eval_time_s"),
            "tokens": s.get("tokens"), "peak_memory_mb": s.get("peak_memory_mb"),
            "eval_during": s.get("eval_during") or [], "eval_after": s.get("eval_after"),
            "sampling": sampling or None, "grpo": grpo_steps(run.path / s["dir"]) if s["method"] == "grpo" else None,
        })  # fmt: skip
    model, tokenizer, _ = models.load_for_inference(str(run.path))
    return {"parts": parts, "levels": score(model, tokenizer, cfg, recipe.system_prompt() if not recipe.stages
                                            else recipe.stages[0].recipe.system_prompt())}  # fmt: skip


# ---------------------------------------------------------------- the harness


def merged(stem: Path, sources: list[Path]) -> dict:
    """`--merge`: the results at `stem` with the arms of `sources` (same settings) added or replacing theirs, each
    arm noting the file it was measured in, in the harness's order of arms."""
    report = merged_results(stem, sources, "arms")
    report["arms"] = {arm: report["arms"][arm] for arm in [*ARMS, *report["arms"]] if arm in report["arms"]}
    return report


def summarize(arm: str, result: dict) -> dict:
    """One arm's figures: the headline level's, the minutes (sampling counted), the curve over stages."""
    if "error" in result:
        return {"arm": arm, **result}
    head = result["levels"][str(HEADLINE + 1)]
    row = {"arm": arm, "accuracy": head["accuracy"], "format": head["format"], "think_tokens": head["think_tokens"],
           "levels": result["levels"], "steps": 0, "curve": [], "parts": result.get("parts", [])}  # fmt: skip
    offset = 0.0
    for p in row["parts"]:
        offset += p["sampling_s"]
        row["curve"] += [{"minutes": (offset + c["train_time_s"]) / 60, "stage": p["stage"], "accuracy": c["accuracy"],
                          "reply_tokens": c.get("mean_reply_tokens")} for c in p["eval_during"]]  # fmt: skip
        offset += p["wall_time_s"]
        if p["eval_after"]:
            row["curve"].append({"minutes": offset / 60, "stage": p["stage"], "accuracy": p["eval_after"]["accuracy"],
                                 "reply_tokens": p["eval_after"].get("mean_reply_tokens")})  # fmt: skip
        row["steps"] += p["steps"]
    row["minutes"] = offset / 60
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--only", nargs="+", choices=ARMS, help="a subset of the arms")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=10.0, help="training minutes per arm (default)")
    budget.add_argument("--steps", type=int, help="optimizer steps per arm instead of minutes (split as the minutes)")
    budget.add_argument("--as-shipped", action="store_true", help="the r1 or r1_zero arm as its recipe is shipped (its "
                        "own steps, learning-rate schedule and evaluations: `lowtune train r1` as a user runs it), "
                        "then scored as every arm")  # fmt: skip
    parser.add_argument("--eval-every", type=float, help="minutes between curve evaluations (default: budget/4)")
    parser.add_argument("--n", type=int, default=100, help="held-out 4-operand problems (the headline)")
    parser.add_argument("--n-level", type=int, default=50, help="held-out 3- and 5-operand problems each")
    parser.add_argument("--n-curve", type=int, help="held-out 4-operand problems per curve point (default 50)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--length-weight", type=float, default=0.1, help="cold_start_grpo_length's length reward")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every arm run (a pipeline stage's: stages.2.train.beta=0.04): "
                        "a tuning study, written under its own --name; a second seed needs a stage's train.seed "
                        "other than its data.seed, which train.seed follows (1 in r1's GRPO stage)")  # fmt: skip
    parser.add_argument("--start-from", metavar="RUN", help="train every arm further from this run's adapter; the "
                        "base arm scores it")  # fmt: skip
    parser.add_argument("--keep-runs", type=Path, metavar="DIR", help="keep the arms' runs here (default: a temporary "
                        "directory)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a few steps per arm: checks the harness")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="reasoning", help="file stem of the results")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="write the table and plot again from a results file (and its reference trace lengths)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: copy the arms of these results (same settings) into --name's, replacing arms of the "
        "same name; the table says which file each came from",
    )
    add_worker_arguments(parser)
    args = parser.parse_args()
    if serve_worker(args, worker):
        return
    if args.merge:
        stem = args.out / args.name
        report = merged(stem, args.merge)
        write(stem, report)
        return
    if args.render:
        report = json.loads(args.render.read_text())
        report["reference_think_tokens"] = reference_think_tokens(report["settings"])
        write(args.render.with_suffix(""), report)
        return

    from lowtune import builtin, ui

    if args.as_shipped and (args.eval_every is not None or args.n_curve is not None):
        parser.error("--as-shipped evaluates as the recipe does (its eval section): --eval-every and --n-curve do not "
                     "apply; change the recipe's eval with --set stages.N.eval.KEY=VALUE")  # fmt: skip
    arms = args.only or (["r1"] if args.as_shipped else [arm for arm in ARMS if arm not in FROM_CHECKPOINT])
    minutes = None if args.steps or args.as_shipped else args.minutes
    cfg: dict[str, Any] = {
        "model": args.model, "minutes": minutes, "steps": args.steps, "as_shipped": args.as_shipped,
        "eval_every": args.eval_every if args.eval_every is not None else (minutes / 4 if minutes else None),
        "rs_problems_per_minute": round(rs_problems_per_minute(), 2) if minutes else None,
        "n": args.n, "n_level": args.n_level, "n_curve": None if args.as_shipped else args.n_curve or 50,
        "max_new_tokens": args.max_new_tokens,
        "levels": list(LEVELS), "digits": DIGITS, "batch_size": 50, "length_weight": args.length_weight,
        "quick": args.quick, "set": args.set, "start_from": args.start_from,
    }  # fmt: skip
    if args.keep_runs and args.keep_runs.exists() and any(args.keep_runs.iterdir()):
        parser.error(f"--keep-runs {args.keep_runs} is not empty: give a new directory (the arms' recipes and runs go "
                     "there, under the arms' names)")  # fmt: skip
    if args.as_shipped and set(arms) - AS_SHIPPED:
        parser.error(f"--as-shipped runs a whole recipe as shipped: the arms {', '.join(sorted(AS_SHIPPED))}, not "
                     f"{', '.join(sorted(set(arms) - AS_SHIPPED))} (give them with --only)")  # fmt: skip
    if FROM_CHECKPOINT.intersection(arms) and not args.start_from:
        parser.error(f"the arms {', '.join(sorted(FROM_CHECKPOINT.intersection(arms)))} train r1's later stages from a "
                     "cold start: give them one with --start-from RUN")  # fmt: skip
    if args.quick:  # every arm briefly, every code path (periodic evaluation included) exercised
        cfg |= {"minutes": None, "steps": 2, "n": 2, "n_level": 2, "max_new_tokens": 8, "rs_problems_per_minute": None}
    if args.model in builtin.BUILTINS:
        builtin.ensure(args.model, ui.say)  # converted once, before any timing
    what = ("the recipe's own steps" if args.as_shipped and not args.quick else f"{cfg['steps']} steps"
            if cfg["steps"] else f"{cfg['minutes']:g} min")  # fmt: skip
    ui.say(f"{len(arms)} arms on {args.model}, {what} of training each; held-out n={cfg['n']} (4 operands)")

    report: dict[str, Any] = {"benchmark": "reasoning", "machine": machine_info(), "settings": cfg, "arms": {}}
    stem = args.out / args.name
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep_runs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for arm in arms:
            ui.say(f"{arm} ...")
            row = summarize(arm, run_worker(__file__, arm, cfg, workdir))
            report["arms"][arm] = row
            shown = row.get("error") or f"{row['accuracy']:.0%}, format {row['format']:.0%}"
            ui.say(f"{arm}: {shown} after {row.get('minutes', 0):.1f} min")
            report["total_minutes"] = (time.perf_counter() - began) / 60
            report["reference_think_tokens"] = reference_think_tokens(cfg)
            write(stem, report)  # after every arm: a crash later keeps what was measured
    ui.table("Reasoning arms on multi-step arithmetic, " + describe(report["machine"]), COLUMNS, table_rows(report))


# Accuracy with 3, 4 and 5 operands (4: the headline), format adherence and think length with 4, think length by level.
COLUMNS = ["arm", "acc 4", "format", "think", "acc 3", "acc 5", "think 3/4/5", "min", "steps"]


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.0%}"


def _tokens(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for arm, r in report["arms"].items():
        if "error" in r:
            rows.append([arm, f"failed: {r['error']}", *[""] * (len(COLUMNS) - 2)])
            continue
        lv = r["levels"]
        think = " / ".join(_tokens(lv[k]["think_tokens"]) for k in sorted(lv, key=int))
        rows.append([arm, _pct(r["accuracy"]), _pct(r["format"]), _tokens(r["think_tokens"]),
                     _pct(lv.get("3", {}).get("accuracy")), _pct(lv.get("5", {}).get("accuracy")), think,
                     f"{r['minutes']:.1f}", str(r["steps"])])  # fmt: skip
    return rows


def write(stem: Path, report: dict) -> None:
    """stem.json, stem.md (the table, with the machine and the budget) and stem.png (three panels)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    s = report["settings"]
    shipped_steps = s.get("as_shipped") and not s.get("quick")
    budget = ("each recipe as shipped (its own steps)" if shipped_steps else f"{s['steps']} optimizer steps"
              if s["steps"] else f"{s['minutes']:g} min of training")  # fmt: skip
    budget += f", every recipe with {', '.join(s['set'])}" if s.get("set") else ""
    schedule = ("each stage at its recipe's learning-rate schedule" if s.get("as_shipped")
                else "learning rate constant after warm-up")  # fmt: skip
    reference = report.get("reference_think_tokens")
    sources: dict[str, list[str]] = {}
    for arm, r in report["arms"].items():
        if "measured_in" in r:
            sources.setdefault(r["measured_in"], []).append(arm)
    lines = [
        f"Machine: {describe(report['machine'])}. Budget: {budget} per arm (rejection sampling's sampling counted), "
        f"{schedule}. Held-out multi-step problems with {s['digits']}-digit numbers, "
        f"greedy: n={s['n']} with 4 operands, n={s['n_level']} with 3 and with 5. Think tokens: inside `<think>`, "
        "of the replies that have one"
        + (
            f"; the worked traces of the same problems: {' / '.join(f'{reference[k]:.0f}' for k in sorted(reference))}"
            " tokens with 3 / 4 / 5 operands."
            if reference
            else "."
        ),
        "",
        *markdown_table(COLUMNS, table_rows(report)),
    ]
    if s.get("start_from"):
        lines += ["", f"Every arm continues the adapter of `{s['start_from']}` (`--start-from`); `base` is that "
                  "adapter as it was, scored."]  # fmt: skip
    if sources:  # --merge
        lines += ["", "Arms measured in other runs of the harness with these settings (`--merge`): "
                  + "; ".join(f"{', '.join(arms)} in {name}" for name, arms in sources.items())
                  + f"; {', '.join(a for a in report['arms'] if 'measured_in' not in report['arms'][a]) or 'none'}"
                  " in the run they were merged into."]  # fmt: skip
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {a: r for a, r in report["arms"].items() if "error" not in r}
    color = {arm: f"C{i}" for i, arm in enumerate(report["arms"])}  # one colour per arm in every panel
    base = done.get("base")
    start = [{"minutes": 0.0, "accuracy": base["accuracy"]}] if base else []
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    for arm, r in done.items():
        if r["curve"]:  # every arm starts from the base model: its score at minute 0
            curve = start + r["curve"]
            ax1.plot([c["minutes"] for c in curve], [c["accuracy"] for c in curve], marker="o", label=arm,
                     color=color[arm])  # fmt: skip
        steps = [s for p in r.get("parts", []) for s in p.get("grpo") or []]
        if steps and "think_tokens" in steps[0]:  # GRPO's logged think length, step by step
            ax2.plot(range(1, len(steps) + 1), [s["think_tokens"] for s in steps], label=arm, color=color[arm])
    ax1.set_xlabel("training minutes (evaluations excluded)")
    ax1.set_ylabel(f"held-out accuracy, 4 operands (n={s['n_curve']})" if not s.get("as_shipped")
                   else "held-out accuracy, 4 operands (the recipe's evaluations)")  # fmt: skip
    if ax1.lines:  # a report of the base arm alone has no curve
        ax1.legend(fontsize=7)
    ax2.set_xlabel("GRPO step")
    ax2.set_ylabel("mean think tokens of the sampled completions")
    if ax2.lines:
        ax2.legend(fontsize=7)
    width = 0.8 / max(len(done), 1)
    for i, (arm, r) in enumerate(done.items()):
        keys = sorted(r["levels"], key=int)
        ax3.bar([int(k) + (i - len(done) / 2 + 0.5) * width for k in keys], [r["levels"][k]["accuracy"] for k in keys],
                width=width, label=arm, color=color[arm])  # fmt: skip
    ax3.set_xticks([int(k) for k in sorted(next(iter(done.values()))["levels"], key=int)] if done else [])
    ax3.set_xlabel("operands")
    ax3.set_ylabel("held-out accuracy")
    ax3.legend(fontsize=7)
    fig.suptitle(f"Reasoning arms on multi-step arithmetic, {budget} each — {describe(report['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
