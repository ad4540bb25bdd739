"""What every benchmark writes next to its numbers: the machine, and the report files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def machine_info(packages: tuple[str, ...] = ("transformers", "trl", "peft")) -> dict[str, Any]:
    """CPU model and cores, GPU name, memory, and the versions of torch and `packages`."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    for lib in packages:
        try:
            info[lib] = __import__(lib).__version__
        except (ImportError, AttributeError):
            info[lib] = None
    return info


def describe(info: dict[str, Any]) -> str:
    where = info.get("gpu") or f"{info['cpu']}, {info['cores']} cores"
    return f"{where}; torch {info['torch']}"


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table (a `|` inside a cell becomes `/`)."""
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows),
    ]


def s_per_step(logs: list[dict], skip: int) -> float | None:
    """Seconds per step between the log at step `skip` (or the first after it) and the last log; None
    with fewer than two such logs. `logs` are {"step", "time"} records, as metrics.jsonl has them."""
    measured = [r for r in logs if r["step"] >= skip]
    if len(measured) < 2:
        return None
    first, last = measured[0], measured[-1]
    return (last["time"] - first["time"]) / (last["step"] - first["step"])


def write_report(
    stem: Path, report: dict, columns: list[str], rows: list[list[str]], bars: dict[str, float], ylabel: str
) -> None:
    """Write stem.json, stem.md (a table with the machine) and stem.png (a bar chart)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Machine: {describe(report['machine'])}", "", *markdown_table(columns, rows)]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(list(bars), list(bars.values()), color=["#888", "#2a7"][: len(bars)] or None)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{report['benchmark']} — {describe(report['machine'])}", fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)


def train_run(recipe: Path, name: str, overrides: list[str]) -> Path:
    """Run `lowtune train RECIPE` in a fresh process (output.name=NAME) and return its run directory."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lowtune", "train", str(recipe), "--quiet", f"output.name={name}", *overrides],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return Path(next(line.split("run directory ", 1)[1] for line in out.stdout.splitlines() if "run directory" in line))


def run_worker(script: str, name: str, cfg: dict, workdir: Path) -> dict:
    """Run `script --worker name` in a fresh process (a harness's arm or method); the JSON it wrote to
    workdir/<name>.result.json with the process's seconds, or {"error", "log_tail"}: a failure never stops a harness."""
    out = workdir / f"{name}.result.json"
    cmd = [sys.executable, script, "--worker", name, "--workdir", str(workdir), "--config", json.dumps(cfg)]
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        return {"error": f"exit code {proc.returncode}", "log_tail": tail, "process_s": time.perf_counter() - began}
    return {**json.loads(out.read_text()), "process_s": round(time.perf_counter() - began, 1)}


def add_worker_arguments(parser) -> None:
    """The hidden arguments `run_worker` starts a harness's script with."""
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)


def serve_worker(args, worker) -> bool:
    """In a process `run_worker` started: run `worker(name, cfg, workdir)`, write its JSON where `run_worker` reads
    it, and say True (the script then exits); False in the harness's own process."""
    if not args.worker:
        return False
    result = worker(args.worker, json.loads(args.config), args.workdir)
    (args.workdir / f"{args.worker}.result.json").write_text(json.dumps(result, indent=2))
    return True


def settings_differ(a: dict, b: dict) -> list[str]:
    """The settings in which two results differ; one a result predates reads as unset (None, False, [] alike)."""
    return sorted(k for k in {*a, *b} if (a.get(k) or None) != (b.get(k) or None))


def merged_results(stem: Path, sources: list[Path], rows: str) -> dict:
    """`--merge` of a harness: the results at `stem` with the `rows` (e.g. "methods", "arms") of `sources` added, or
    replacing rows of the same name; each row noting the file it was measured in (`measured_in`, kept from an earlier
    merge) and its machine where that differs from the report's. Every source must have the report's settings (the
    rows would not compare otherwise): an error names those that differ."""
    path = stem.with_suffix(".json")
    if not path.is_file():
        raise SystemExit(f"--merge: {path} does not exist; name the results to merge into with --name/--out")
    report = json.loads(path.read_text())
    for source in sources:
        other = json.loads(source.read_text())
        differ = settings_differ(report["settings"], other["settings"])
        if differ:
            raise SystemExit(f"--merge: {source} was measured with other settings than {path} ({', '.join(differ)})")
        for name, row in other[rows].items():
            row = {"measured_in": source.name, **row}
            machine = row.pop("machine", other["machine"])
            report[rows][name] = row if machine == report["machine"] else {**row, "machine": machine}
    return report
