"""benchmarks/throughput.py: the cuda code path, run on the CPU with a tiny shape (--dry-run-cpu), its plan, its
ratios against plain TRL with the issue's targets, and the levers' overrides reaching TRL's config classes."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import throughput  # noqa: E402


def test_cuda_path_dry_run_measures_every_row(tmp_path, tiny_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "results"
    # a --budget that a busy 2-core machine does not cut short
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "cuda", "--dry-run-cpu", "--methods", "sft",
           "dpo", "grpo", "--variants", "plain", "static-cache", "liger", "--tokenizer", str(tiny_path),
           "--budget", "3000", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "throughput_cuda.json").read_text())
    assert report["machine"]["torch"] and report["settings"]["dry_run_cpu"]
    assert report["models"]["tiny-qwen2"]["parameters"] > 0
    rows = {(r["method"], r["variant"]): r for r in report["measurements"]}
    # each method's comparison with plain TRL first (GRPO, SFT, DPO), then the levers, GRPO's first
    assert list(rows) == [("grpo", "lowtune"), ("grpo", "plain"), ("sft", "lowtune"), ("sft", "plain"),
                          ("dpo", "lowtune"), ("dpo", "plain"), ("grpo", "static-cache"), ("grpo", "liger"),
                          ("sft", "liger"), ("dpo", "liger")]  # fmt: skip
    work = report["settings"]["work"]
    skipped = "skipped: not on the CPU: Liger's kernels are Triton GPU kernels (no CPU path)"
    assert [rows[m, "liger"]["error"] for m in ("grpo", "sft", "dpo")] == [skipped] * 3  # with the reason
    measured = {k: r for k, r in rows.items() if k[1] != "liger"}
    for key, row in measured.items():
        assert "error" not in row, (key, row["error"])
        assert row["s_per_step"] > 0 and row["tokens_per_s"] > 0, key
        assert row["peak_rss_mb"] > row["rss_at_train_start_mb"] > 0, key
        assert [r["step"] for r in row["logs"]] == list(range(1, len(row["logs"]) + 1)), key
    # every SFT row is exactly the sequence length: lowtune's own token counter agrees
    assert rows["sft", "lowtune"]["tokens_per_step_seen"] == work["sft"]["batch"] * work["sft"]["length"]
    # plain DPO trains the same tokens per step as lowtune's: 2 pairs x 2 replies x the length
    for side in ("lowtune", "plain"):
        logs = rows["dpo", side]["logs"]
        assert logs[1]["num_tokens"] - logs[0]["num_tokens"] == work["dpo"]["batch"] * 2 * work["dpo"]["length"]
    # random weights never stop early: every completion runs to the budget
    for variant in ("lowtune", "plain", "static-cache"):
        assert rows["grpo", variant]["completion_length"] == work["grpo"]["max_completion_length"]
    for method in ("grpo", "sft", "dpo"):  # TRL's default, reported
        assert rows[method, "plain"]["checks"]["gradient_checkpointing"] is True
    assert rows["grpo", "lowtune"]["summary"]["quantization"] == "nf4"
    # the lever reached the trainer's arguments; lowtune's own row has TRL's default
    assert rows["grpo", "static-cache"]["trl_args"]["cache_implementation"] == "static"
    assert rows["grpo", "lowtune"]["trl_args"]["cache_implementation"] is None
    ratios = {(e["method"], e["variant"]): e for e in report["ratios"]}
    assert list(ratios) == [("grpo", "lowtune"), ("sft", "lowtune"), ("dpo", "lowtune"), ("grpo", "static-cache")]
    for (method, variant), e in ratios.items():
        mine, plain = rows[method, variant], rows[method, "plain"]
        assert e["peak"] == round(mine["peak_rss_mb"] / plain["peak_rss_mb"], 3)
        assert e["s_per_step"] == round(mine["s_per_step"] / plain["s_per_step"], 3)
        assert set(e["targets"]) == set(throughput.TARGETS[method])
    table = (out / "throughput_cuda.md").read_text()
    assert "| tiny-qwen2 | dpo | plain TRL + PEFT + bnb |" in table
    assert "| tiny-qwen2 | sft | lowtune + Liger kernels | skipped |" in table
    assert "DPO at tiny-qwen2, lowtune / plain: s/step" in table and "(target >= 1.3x)" in table
    assert (out / "throughput_cuda.png").stat().st_size > 0


def _row(method: str, variant: str, s: float | None = 1.0, tokens: float | None = 10.0, peak: float | None = 2000.0,
         start: float = 1000.0, error: str | None = None, shape: str = "qwen2.5-1.5b") -> dict:  # fmt: skip
    row = {"shape": shape, "method": method, "variant": variant}
    if error:
        return {**row, "error": error}
    return {**row, "cuda_max_allocated_mb": peak, "cuda_allocated_at_train_start_mb": start, "s_per_step": s,
            "tokens_per_s": tokens}  # fmt: skip


def test_ratios_against_plain_check_each_target_and_say_by_how_much():
    rows = [
        _row("grpo", "lowtune", s=40.0, peak=2200.0), _row("grpo", "plain", s=50.0, peak=2000.0),
        _row("sft", "lowtune", tokens=1200.0, peak=1000.0, shape="llama-3.2-1b"),
        _row("sft", "plain", tokens=1000.0, peak=2000.0, shape="llama-3.2-1b"),
        _row("dpo", "lowtune"), _row("dpo", "plain", error="exit 1: boom"),
        _row("grpo", "static-cache", s=15.0, peak=2100.0),
        _row("sft", "liger", tokens=1600.0, peak=1500.0, shape="llama-3.2-1b"),
        _row("grpo", "liger", error="skipped: the liger_kernel package is not installed here"),
    ]  # fmt: skip
    ratios = {(e["method"], e["variant"]): e for e in throughput.cuda_ratios(rows)}
    assert list(ratios) == [("grpo", "lowtune"), ("sft", "lowtune"), ("grpo", "static-cache"), ("sft", "liger")]
    grpo = ratios["grpo", "lowtune"]
    assert (grpo["s_per_step"], grpo["tokens_per_s"], grpo["peak"]) == (0.8, 1.0, 1.1)
    assert grpo["targets"]["s_per_step"] == {
        "target": "<= 0.33", "met": False, "off": 1.424,
        "text": "0.80x plain (target <= 0.33x): NOT met, 142% above the target",
    }  # fmt: skip
    assert grpo["targets"]["peak"]["met"] and grpo["targets"]["peak"]["off"] == 0.0  # exactly at the bound
    assert not grpo["all_met"]
    cached = ratios["grpo", "static-cache"]
    assert cached["targets"]["s_per_step"]["text"] == "0.30x plain (target <= 0.33x): met, 9% below the target"
    assert cached["targets"]["peak"]["text"] == "1.05x plain (target <= 1.1x): met, 5% below the target"
    assert cached["all_met"]
    sft = ratios["sft", "lowtune"]
    assert sft["targets"]["tokens_per_s"]["text"] == "1.20x plain (target >= 1.5x): NOT met, 20% below the target"
    assert sft["targets"]["peak"]["text"] == "0.50x plain (target <= 0.8x): met, 38% below the target"
    liger = ratios["sft", "liger"]
    assert liger["targets"]["tokens_per_s"]["text"] == "1.60x plain (target >= 1.5x): met, 7% above the target"
    assert liger["targets"]["peak"]["text"] == "0.75x plain (target <= 0.8x): met, 6% below the target"

    _, notes, _ = throughput.cuda_table(rows)
    text = "\n".join(notes)
    assert ("GRPO at qwen2.5-1.5b, lowtune / plain: s/step 0.80x plain (target <= 0.33x): NOT met, 142% above the "
            "target; tokens/s 1.00x; peak 1.10x plain (target <= 1.1x): met, 0% below the target.") in text  # fmt: skip
    assert "GRPO at qwen2.5-1.5b: every target met by lowtune + static KV cache." in text
    assert "SFT at llama-3.2-1b: every target met by lowtune + Liger kernels." in text
    assert "DPO at qwen2.5-1.5b: no ratio (the lowtune or the plain row failed or was skipped)." in text
    rows[-2] = _row("sft", "liger", tokens=1400.0, peak=1500.0, shape="llama-3.2-1b")
    _, notes, _ = throughput.cuda_table(rows)
    assert "SFT at llama-3.2-1b: no measured variant meets every target." in notes


def test_plan_puts_the_comparisons_first_then_the_levers_then_the_other_rows():
    plan = throughput._cuda_plan(throughput.DEFAULT_SHAPES, list(throughput.METHODS), "qwen2.5-1.5b",
                                 ["plain", *throughput.LEVERS])  # fmt: skip
    q, ll = "qwen2.5-1.5b", "llama-3.2-1b"
    assert plan[:8] == [(q, "grpo", "lowtune"), (q, "grpo", "plain"), (ll, "sft", "lowtune"), (ll, "sft", "plain"),
                        (q, "sft", "lowtune"), (q, "sft", "plain"),
                        (q, "dpo", "lowtune"), (q, "dpo", "plain")]  # fmt: skip
    levers = [(m, v) for s, m, v in plan[8:] if v != "lowtune"]
    assert levers == [("grpo", "continuous-batching"), ("grpo", "static-cache"), ("grpo", "liger"), ("grpo", "no-gc"),
                      ("grpo", "kernel"), ("sft", "liger"), ("sft", "no-gc"), ("sft", "padding-free"),
                      ("sft", "offload"), ("dpo", "liger"), ("dpo", "no-gc"), ("dpo", "offload")]  # fmt: skip
    assert plan[8 + len(levers) :] == [(q, "ppo", "lowtune"), ("qwen2.5-0.5b", "sft", "lowtune"),
                                       ("qwen2.5-0.5b", "dpo", "lowtune"), ("qwen2.5-0.5b", "grpo", "lowtune"),
                                       (ll, "dpo", "lowtune"), (ll, "grpo", "lowtune")]  # fmt: skip
    assert all(s in throughput.DEFAULT_SHAPES for s, _, _ in plan) and "llama-3.2-3b" in throughput.SHAPES
    # --variants picks the levers; without plain, no plain rows
    plan = throughput._cuda_plan([q], ["sft", "grpo"], q, ["offload"])
    assert plan == [(q, "grpo", "lowtune"), (q, "sft", "lowtune"), (q, "sft", "offload")]


@pytest.mark.parametrize("variant", sorted(throughput.LEVERS))
def test_each_lever_is_accepted_by_the_recipe_loader_and_reaches_trls_config(variant, tmp_path, tiny_path):
    import dataclasses

    from lowtune import recipes
    from lowtune.config import load_recipe, train_config_class
    from lowtune.runs import RunDir

    methods, overrides, _ = throughput.LEVERS[variant]
    rows = {"sft": {"text": "1 + 2 = 3."}, "dpo": {"prompt": "1 + 2?", "chosen": "3", "rejected": "4"}}
    for method in methods:
        data = tmp_path / f"{method}.jsonl"
        data.write_text(json.dumps(rows.get(method, {})) + "\n")
        spec = dict(method=method, model=str(tiny_path), precision="nf4", gc=None, workdir=str(tmp_path / "runs"),
                    steps=3, data=str(data), extra_overrides=overrides, **throughput.CUDA_WORK[method])  # fmt: skip
        recipe = load_recipe(ROOT / "recipes" / f"{method}.yaml", throughput.lowtune_overrides(spec))
        fields = {f.name for f in dataclasses.fields(train_config_class(method))}
        args = recipes.trl_args(recipe, RunDir(tmp_path / "run"))
        for override in overrides:
            key, value = override.split("=", 1)
            want = {"true": True, "false": False}.get(value, value)
            if key.startswith("model."):  # lowtune's own settings
                assert getattr(recipe.model, key.removeprefix("model.")) == want, (variant, method)
                continue
            field = key.removeprefix("train.")
            assert field in fields and recipe.train[field] == want, (variant, method, field)
            config = train_config_class(method)(output_dir=str(tmp_path / "out"), use_cpu=True, **recipe.train)
            assert getattr(config, field) == want, (variant, method, field)
            if throughput.lever_skip(variant, dry=True) is None:  # what lowtune builds here, too
                assert getattr(args, field) == want, (variant, method, field)
        if variant == "no-gc":
            assert args.gradient_checkpointing is False


def test_a_lever_the_trainer_did_not_get_is_no_measurement():
    assert throughput.lever_missed("padding-free", {"trl_args": {"padding_free": True, "packing": True,
                                                                 "packing_strategy": "bfd"}}) is None  # fmt: skip
    assert throughput.lever_missed("liger", {"trl_args": {"use_liger_kernel": False}}) == (
        "not the lever: the trainer got use_liger_kernel=False, not True"
    )
    assert "static-cache" not in throughput.LEVER_NEEDS and throughput.lever_skip("static-cache", dry=False) is None


def _report(machine: dict, rows: list[dict], compare: str = "qwen2.5-1.5b") -> dict:
    settings = {"compare_shape": compare, "budget_s": 100}
    return {"benchmark": "throughput_cuda", "machine": machine, "settings": settings, "models": {},
            "measurements": rows, "wall_time_s": 10.0}  # fmt: skip


def test_merge_fills_skipped_rows_from_a_later_call_and_refuses_other_machines(tmp_path):
    from benchmarks.throughput import merge

    machine = {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "cpu": "x", "cores": 16, "trl": "1.16.0"}
    first = _report(machine, [_row("grpo", "lowtune"), _row("grpo", "plain", start=1100.0),
                              _row("sft", "lowtune", error="skipped: time budget spent (--budget)"),
                              _row("grpo", "static-cache", error="skipped: time budget spent (--budget)")])  # fmt: skip
    second = _report(machine, [_row("sft", "lowtune", peak=1500.0), _row("grpo", "plain", error="exit 1: boom"),
                               _row("grpo", "static-cache", s=0.25, peak=2100.0)])  # fmt: skip
    files = []
    for i, report in enumerate((first, second)):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(report))
    out = tmp_path / "merged"
    args = argparse.Namespace(reports=files, out=out)
    merge(args)
    merged = json.loads((out / "throughput_cuda.json").read_text())
    rows = {(r["method"], r["variant"]): r for r in merged["measurements"]}
    # the first call's order
    assert list(rows) == [("grpo", "lowtune"), ("grpo", "plain"), ("sft", "lowtune"), ("grpo", "static-cache")]
    assert rows["sft", "lowtune"]["cuda_max_allocated_mb"] == 1500.0  # the skipped row, filled by the later call
    assert "error" not in rows["grpo", "plain"]  # a later failure does not replace a measurement
    ratios = {e["variant"]: e for e in merged["ratios"]}
    assert ratios["lowtune"]["peak"] == 1.0 and ratios["static-cache"]["s_per_step"] == 0.25
    assert merged["wall_time_s"] == 20.0
    table = (out / "throughput_cuda.md").read_text()
    assert "s/step 1.00x plain (target <= 0.33x): NOT met, 203% above the target" in table
    assert "GRPO at qwen2.5-1.5b: every target met by lowtune + static KV cache." in table
    assert (out / "throughput_cuda.png").stat().st_size > 0

    files[1].write_text(json.dumps(_report({**machine, "gpu": "NVIDIA H100"}, second["measurements"])))
    with pytest.raises(SystemExit, match="different machines"):
        merge(args)
