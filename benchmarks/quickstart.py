"""The quick start as a user runs it: `lowtune train sft` in a fresh process, its figures recorded.

    python benchmarks/quickstart.py            # one run (the builtin model is converted first if not cached)

Runs the shipped `sft` recipe unchanged (builtin SmolLM2-135M-Instruct, 60 steps) in a temporary
directory and records what its summary table shows: held-out accuracy before and after, seconds per
step, wall time, tokens/s, peak memory, loss. The 1-minute load average before and after is recorded
too: s/step is only comparable between runs on an otherwise idle machine. Writes
benchmarks/results/quickstart.{json,md,png}; the README's quick-start figures come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, write_report  # noqa: E402

KEYS = ("steps", "s_per_step", "wall_time_s", "tokens_per_s", "peak_memory_mb", "first_loss", "final_loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quickstart")
    args = parser.parse_args()

    from lowtune import builtin

    builtin.ensure("smollm2-135m-instruct", print)  # the one-time conversion is not part of the figure
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lowtune", "train", "sft", "--quiet"], cwd=tmp, check=True)
        seconds = time.perf_counter() - start
        summary = json.loads((Path(tmp) / "runs" / "sft" / "summary.json").read_text())
    report = {
        "benchmark": "quickstart",
        "command": "lowtune train sft",
        "machine": machine_info(),
        "builtin_model": f"smollm2-135m-instruct (builtin version {builtin.BUILD_VERSION})",
        "command_seconds": round(seconds, 1),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "accuracy_before": summary["eval_before"]["accuracy"],
        "accuracy_after": summary["eval_after"]["accuracy"],
        "eval_n": summary["eval_after"]["n"],
        **{k: summary.get(k) for k in KEYS},
    }
    rows = [
        [
            f"held-out accuracy (n={report['eval_n']})",
            f"{report['accuracy_before']:.0%} → {report['accuracy_after']:.0%}",
        ],
        ["steps", str(report["steps"])],
        ["s/step", f"{report['s_per_step']:.2f}"],
        ["training wall time", f"{report['wall_time_s']:.1f} s"],
        ["whole command", f"{seconds:.0f} s"],
        ["tokens/s", f"{report['tokens_per_s']:.0f}"],
        ["loss", f"{report['first_loss']:.4f} → {report['final_loss']:.4f}"],
        ["peak memory", f"{report['peak_memory_mb']:,.0f} MiB"],
        ["load average before / after", f"{load_before:.2f} / {report['load_average_1min']['after']:.2f}"],
    ]
    bars = {"before": report["accuracy_before"] * 100, "after": report["accuracy_after"] * 100}
    write_report(args.out, report, ["what", "value"], rows, bars, "held-out accuracy (%)")
    print("\n".join(" | ".join(r) for r in rows))


if __name__ == "__main__":
    main()
