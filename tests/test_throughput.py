"""benchmarks/throughput.py: the cuda code path, run on the CPU with a tiny shape (--dry-run-cpu)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_path_dry_run_measures_every_row(tmp_path, tiny_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "cuda", "--dry-run-cpu", "--methods", "sft",
           "grpo", "--variants", "plain", "--tokenizer", str(tiny_path), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "throughput_cuda.json").read_text())
    assert report["machine"]["torch"] and report["settings"]["dry_run_cpu"]
    assert report["models"]["tiny-qwen2"]["parameters"] > 0
    rows = {(r["method"], r["variant"]): r for r in report["measurements"]}
    # the GRPO comparison runs first, then the other methods
    assert list(rows) == [("grpo", "lowtune"), ("grpo", "plain"), ("sft", "lowtune")]
    work = report["settings"]["work"]
    for key, row in rows.items():
        assert "error" not in row, (key, row["error"])
        assert row["s_per_step"] > 0 and row["tokens_per_s"] > 0, key
        assert row["peak_rss_mb"] > row["rss_at_train_start_mb"] > 0, key
        assert [r["step"] for r in row["logs"]] == list(range(1, len(row["logs"]) + 1)), key
    # every SFT row is exactly the sequence length: lowtune's own token counter agrees
    assert rows["sft", "lowtune"]["tokens_per_step_seen"] == work["sft"]["batch"] * work["sft"]["length"]
    # random weights never stop early: every completion runs to the budget
    for side in ("lowtune", "plain"):
        assert rows["grpo", side]["completion_length"] == work["grpo"]["max_completion_length"]
    assert rows["grpo", "plain"]["checks"]["gradient_checkpointing"] is True  # TRL's default, reported
    assert rows["grpo", "lowtune"]["summary"]["quantization"] == "nf4"
    comparison = report["grpo_comparison"]
    assert comparison["lowtune"]["ratio"] == round(
        rows["grpo", "lowtune"]["peak_rss_mb"] / rows["grpo", "plain"]["peak_rss_mb"], 3
    )
    table = (out / "throughput_cuda.md").read_text()
    assert "| tiny-qwen2 | grpo | plain TRL + PEFT + bnb |" in table and "Target at most 0.50" in table
    assert (out / "throughput_cuda.png").stat().st_size > 0


def _report(machine: dict, rows: list[dict], compare: str = "qwen2.5-1.5b") -> dict:
    settings = {"compare_shape": compare, "budget_s": 100}
    return {"benchmark": "throughput_cuda", "machine": machine, "settings": settings, "models": {},
            "measurements": rows, "wall_time_s": 10.0}  # fmt: skip


def _row(method: str, variant: str, peak: float | None, start: float = 1000.0, error: str | None = None) -> dict:
    row = {"shape": "qwen2.5-1.5b", "method": method, "variant": variant}
    if error:
        return {**row, "error": error}
    return {**row, "cuda_max_allocated_mb": peak, "cuda_allocated_at_train_start_mb": start, "s_per_step": 1.0,
            "tokens_per_s": 10.0}  # fmt: skip


def test_merge_fills_skipped_rows_from_a_later_call_and_refuses_other_machines(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.throughput import merge

    machine = {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "cpu": "x", "cores": 16, "trl": "1.16.0"}
    first = _report(machine, [_row("grpo", "lowtune", 2000.0), _row("grpo", "plain", 2000.0, start=1100.0),
                              _row("sft", "lowtune", None, error="skipped: time budget spent (--budget)")])  # fmt: skip
    second = _report(machine, [_row("sft", "lowtune", 1500.0), _row("grpo", "plain", None, error="exit 1: boom")])
    files = []
    for i, report in enumerate((first, second)):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(report))
    out = tmp_path / "merged"
    args = argparse.Namespace(reports=files, out=out)
    merge(args)
    merged = json.loads((out / "throughput_cuda.json").read_text())
    rows = {(r["method"], r["variant"]): r for r in merged["measurements"]}
    assert list(rows) == [("grpo", "lowtune"), ("grpo", "plain"), ("sft", "lowtune")]  # the first call's order
    assert rows["sft", "lowtune"]["cuda_max_allocated_mb"] == 1500.0  # the skipped row, filled by the later call
    assert "error" not in rows["grpo", "plain"]  # a later failure does not replace a measurement
    assert merged["grpo_comparison"]["lowtune"]["ratio"] == 1.0 and merged["wall_time_s"] == 20.0
    table = (out / "throughput_cuda.md").read_text()
    assert "NOT met" in table and "no run that keeps the same NF4 weights" in table  # 1100 of 2000 MB at start
    assert (out / "throughput_cuda.png").stat().st_size > 0

    files[1].write_text(json.dumps(_report({**machine, "gpu": "NVIDIA H100"}, second["measurements"])))
    with pytest.raises(SystemExit, match="different machines"):
        merge(args)
