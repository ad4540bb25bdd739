"""benchmarks/throughput.py: the cuda code path, run on the CPU with a tiny shape (--dry-run-cpu)."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
