"""Benchmark per-token log-probs through the LM head: time and peak extra memory.

    python benchmarks/logprobs.py                      # CPU, fp32, SmolLM2 + Qwen2.5 shapes
    python benchmarks/logprobs.py --device cuda        # + Llama-3-8B shape, bf16, Triton

Each (shape, variant, mode) runs in a fresh process: one warm-up call, then the median
of `--runs` timed calls. Peak extra memory is the most any timed call held above what
the process held just before it: CUDA max-allocated, or on CPU the peak RSS (VmHWM,
reset through /proc/self/clear_refs, after malloc_trim). Inputs (hidden, frozen head, labels) are
not counted; the gradient of hidden is. Writes JSON, a Markdown table and a PNG to
benchmarks/results/logprobs.{json,md,png}.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine_info  # noqa: E402

SHAPES = {  # (N tokens, H hidden, V vocabulary)
    "SmolLM2-135M": (4096, 576, 49152),
    "Qwen2.5-0.5B": (1024, 896, 151936),
    "Llama-3-8B": (8192, 4096, 128256),
    "tiny": (256, 64, 1000),  # smoke test of this script
}
VARIANTS = [
    "naive",
    "trl_selective_log_softmax",
    "trl_chunked",
    "trl_chunked_4096",
    "liger_flce",
    "lowtune",
    "lowtune_torch",
]
MODES = ["fwd", "fwd+bwd"]
# TRL 1.16's trainers (add_fused_lm_head) call ChunkedLogProbFunction with a 32,768
# vocabulary chunk, 4,096-token tiles, and only log_probs for the reference model.
TRL_TRAINER_CHUNK = 32768


def make_fn(variant: str, hidden, weight, labels, backward: bool):
    """A closure returning per-token log-probs [N] (or a loss whose grad is the same)."""
    if variant == "naive":
        return lambda: (hidden @ weight.t()).float().log_softmax(-1).gather(-1, labels[:, None])[:, 0]
    if variant == "trl_selective_log_softmax":
        from trl.trainer.utils import selective_log_softmax

        return lambda: selective_log_softmax(hidden @ weight.t(), labels)
    if variant.startswith("trl_chunked"):
        import trl.trainer.utils  # noqa: F401  (its backward imports this lazily)
        from trl.kernels import ChunkedLogProbFunction

        chunk = 4096 if variant.endswith("4096") else TRL_TRAINER_CHUNK
        args = (None, labels, 1.0, chunk, None, 1.0, ("log_probs",))
        return lambda: ChunkedLogProbFunction.apply(hidden, weight, *args)[0]
    if variant == "liger_flce":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        # Liger returns the cross-entropy (-logp); "sum" has the same gradient as
        # logp.sum(), which is what the other variants backpropagate.
        none = LigerFusedLinearCrossEntropyLoss(reduction="none")
        total = LigerFusedLinearCrossEntropyLoss(reduction="sum")
        if backward:
            return lambda: -total(weight, hidden, labels)
        return lambda: -none(weight, hidden, labels)
    if variant.startswith("lowtune"):
        sys.path.insert(0, str(ROOT))
        from lowtune.kernels import token_logprobs

        # On CUDA "lowtune" is the Triton path, asked for by name: token_logprobs' default is torch on every device.
        backend = "torch" if variant == "lowtune_torch" else ("triton" if hidden.is_cuda else None)
        return lambda: token_logprobs(hidden, weight, labels, backend=backend)
    raise ValueError(f"unknown variant {variant}")


def unavailable(variant: str, device: str) -> str | None:
    """Why a variant cannot run here, or None."""
    if variant == "liger_flce":
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return "liger-kernel not installed"
        if device != "cuda":
            return "Liger's kernels are Triton-only (CUDA)"
    if variant == "lowtune_torch" and device != "cuda":
        return "same as lowtune on CPU"
    return None


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args) -> dict:
    """Run one (shape, variant, mode) in this process; return its measurements."""
    n, h, v = SHAPES[args.shape]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=gen).to(device, dtype)
    weight = (torch.randn(v, h, generator=gen) * h**-0.5).to(device, dtype)
    labels = torch.randint(0, v, (n,), generator=gen).to(device)
    backward = args.mode == "fwd+bwd"
    hidden.requires_grad_(backward)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # Imports happen here, before any measurement.
    fn = make_fn(args.variant, hidden, weight, labels, backward)

    def call():
        with torch.set_grad_enabled(backward):
            out = fn()
            if backward:
                out.sum().backward()
        del out

    libc = None if cuda else ctypes.CDLL("libc.so.6")
    times, peaks = [], []
    for i in range(args.runs + 1):
        hidden.grad = None
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            # Hand freed heap back to the OS first: memory glibc kept from the last
            # call would otherwise be reused without raising the peak RSS.
            libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
            base = _rss_kib("VmRSS") * 1024
        t0 = time.perf_counter()
        call()
        sync()
        elapsed = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024
        if i > 0:  # the first call is the warm-up (one-time allocations)
            times.append(elapsed)
            peaks.append(peak - base)
    return {
        "time_s": statistics.median(times),
        "times_s": times,
        "peak_mib": max(peaks) / 2**20,
    }


def _cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process's finished children)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy / os.sysconf("SC_CLK_TCK"), children.ru_utime + children.ru_stime


def run_measured(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run a worker; also return how many cores other processes kept busy meanwhile (CPU timings are only
    comparable when that is ~0: on 2 cores, one busy neighbour can double a time)."""
    busy0, own0 = _cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    busy1, own1 = _cpu_seconds()
    return proc, max(0.0, (busy1 - busy0) - (own1 - own0)) / wall


def wait_idle(max_cores: float, sample_s: float = 5.0, give_up_s: float = 1800.0) -> None:
    """Wait until the machine's other processes use at most `max_cores` over `sample_s`."""
    deadline = time.monotonic() + give_up_s
    while time.monotonic() < deadline:
        busy0, _ = _cpu_seconds()
        time.sleep(sample_s)
        if (_cpu_seconds()[0] - busy0) / sample_s <= max_cores:
            return


def run_all(args) -> dict:
    shapes = args.shapes or (list(SHAPES) if args.device == "cuda" else ["SmolLM2-135M", "Qwen2.5-0.5B"])
    variants = args.variants or VARIANTS
    results = []
    for shape in shapes:
        for variant in variants:
            for mode in MODES:
                row = {"shape": shape, "nhv": SHAPES[shape], "variant": variant, "mode": mode}
                why = unavailable(variant, args.device)
                if why:
                    results.append({**row, "skipped": why})
                    continue
                cmd = [sys.executable, __file__, "--worker", "--shape", shape]
                cmd += ["--variant", variant, "--mode", mode, "--device", args.device]
                cmd += ["--dtype", args.dtype, "--runs", str(args.runs)]
                for attempt in range(args.retries + 1):
                    proc, others = run_measured(cmd)
                    if args.device == "cuda" or others <= args.max_others or attempt == args.retries:
                        break
                    print(f"  other processes used {others:.2f} cores: retrying once they are idle", flush=True)
                    wait_idle(args.max_others)
                if proc.returncode != 0:
                    err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    results.append({**row, "skipped": f"failed: {err}"})
                else:
                    results.append({**row, **json.loads(proc.stdout.strip().splitlines()[-1])})
                    results[-1]["others_cores"] = round(others, 3)
                r = results[-1]
                done = r.get("skipped") or f"{r['time_s']:.3f} s  {r['peak_mib']:.0f} MiB  (others {others:.2f} cores)"
                print(f"{shape:14} {variant:26} {mode:8} {done}", flush=True)
    return {
        "machine": machine_info(("trl", "triton", "liger_kernel")),
        "device": args.device,
        "dtype": args.dtype,
        "runs": args.runs,
        "head": "frozen (hidden requires grad in fwd+bwd; fwd runs under no_grad)",
        "results": results,
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    where = describe(m).rsplit("; torch", 1)[0]
    others = [r["others_cores"] for r in report["results"] if "others_cores" in r]
    busy = f" Other processes kept at most {max(others):.2f} cores busy during any variant." if others else ""
    lines = [
        f"Per-token log-probs, {report['dtype']}, frozen head, on {where}; torch "
        f"{m['torch']}, trl {m['trl']}. Median of {report['runs']} runs after a warm-up; "
        "memory is the peak above the inputs (CUDA max-allocated, CPU peak RSS)." + busy,
        "",
        "| shape (N, H, V) | variant | fwd time | fwd memory | fwd+bwd time "
        "| fwd+bwd memory | fwd+bwd vs naive (time, memory) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["shape"], r["variant"], r["mode"]): r for r in report["results"]}
    shapes = list(dict.fromkeys(r["shape"] for r in report["results"]))
    variants = list(dict.fromkeys(r["variant"] for r in report["results"]))
    for shape in shapes:
        naive = by_key.get((shape, "naive", "fwd+bwd"), {})
        for variant in variants:
            cells = []
            for mode in MODES:
                r = by_key.get((shape, variant, mode), {"skipped": "not run"})
                if "skipped" in r:
                    cells += ["–", "–"]
                else:
                    cells += [f"{r['time_s']:.2f} s", f"{r['peak_mib']:,.0f} MiB"]
            r = by_key.get((shape, variant, "fwd+bwd"), {})
            if "skipped" in r or not r:
                if "skipped" in r and r["skipped"].startswith("same as"):
                    continue
                ratio = r.get("skipped", "not run")
            elif "time_s" in naive:
                ratio = f"{r['time_s'] / naive['time_s']:.2f}×, {100 * r['peak_mib'] / naive['peak_mib']:.0f}%"
            else:
                ratio = ""
            nhv = ", ".join(f"{x:,}" for x in SHAPES[shape])
            lines.append(f"| {shape} ({nhv}) | {variant} | " + " | ".join(cells) + f" | {ratio} |")
    lines += [
        "",
        "naive: `(h @ W.T).float().log_softmax(-1).gather(...)`; trl_selective_log_softmax: TRL's "
        "`selective_log_softmax` on the full logits; trl_chunked: `trl.kernels.ChunkedLogProbFunction` as TRL 1.16's "
        "trainers call it (`add_fused_lm_head`: 32,768-entry vocabulary chunks, 4,096-token tiles, log_probs only); "
        "trl_chunked_4096: the same with 4,096-entry chunks; liger_flce: Liger's fused linear cross-entropy; "
        "lowtune: `lowtune.kernels.token_logprobs` (Triton on CUDA), lowtune_torch: its PyTorch path.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if "skipped" not in r]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    width = 0.8 / max(1, len(variants))
    for i, mode in enumerate(MODES):
        for j, (key, label) in enumerate([("time_s", "time (s)"), ("peak_mib", "peak extra memory (MiB)")]):
            ax = axes[i][j]
            for k, variant in enumerate(variants):
                vals = []
                for shape in shapes:
                    match = [r for r in rows if (r["shape"], r["variant"], r["mode"]) == (shape, variant, mode)]
                    vals.append(match[0][key] if match else 0.0)
                xs = [s + (k - (len(variants) - 1) / 2) * width for s in range(len(shapes))]
                ax.bar(xs, vals, width, label=variant)
            ax.set_xticks(range(len(shapes)), shapes)
            if key == "peak_mib":  # memory spans 100x between variants; times compare better on a linear axis
                ax.set_yscale("log")
            ax.set_title(f"{mode}: {label}")
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    m = report["machine"]
    where = describe(m).rsplit("; torch", 1)[0]
    fig.suptitle(f"token log-probs, {report['dtype']}, frozen head: {where}, torch {m['torch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--shapes", nargs="*", choices=list(SHAPES))
    p.add_argument("--variants", nargs="*", choices=VARIANTS)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument(
        "--max-others", type=float, default=0.1, help="CPU: rerun a variant if other processes used more cores"
    )
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--from-json", type=Path, help="only rewrite the table and plot from this results file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.from_json:
        report = json.loads(args.from_json.read_text())
    else:
        report = run_all(args)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if report["device"] == "cpu" else f"_{report['device']}"
    (args.out / f"logprobs{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / f"logprobs{suffix}.md").write_text(table)
    plot(report, args.out / f"logprobs{suffix}.png")
    print(table)


if __name__ == "__main__":
    main()
