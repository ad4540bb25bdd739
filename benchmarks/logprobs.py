"""Benchmark per-token log-probs through the LM head: time and peak extra memory.

    python benchmarks/logprobs.py                      # CPU, fp32, SmolLM2 + Qwen2.5 shapes
    python benchmarks/logprobs.py --device cuda        # + Llama-3-8B shape, bf16, Triton

Each (shape, variant, mode) runs in a fresh process: one warm-up call, then the median
of `--runs` timed calls. Peak extra memory is the most any timed call held above what
the process held just before it: CUDA max-allocated, or on CPU the peak RSS (VmHWM,
reset through /proc/self/clear_refs, after malloc_trim). Inputs (hidden, frozen head, labels) are
not counted; the gradient of hidden is. Achieved TFLOP/s counts 2·N·H·V FLOPs for fwd (the
logits) and 4·N·H·V for fwd+bwd (+ the gradient of hidden; the head is frozen), and is also given
as a share of the device's matmul rate, measured first, in its own fresh process, in the same dtype
(median of `--runs` n×n @ n×n products after a warm-up: 2·n³ FLOPs each).

Run order: the matmul rate, then issue 22's comparison (Llama-3-8B fwd+bwd: lowtune, trl_chunked,
liger_flce), then the rest shape by shape. Each worker is stopped after `--timeout` seconds and
none starts after `--budget`; the JSON and the Markdown table are rewritten after every row, so an
interrupted run keeps what it measured. Writes JSON, a Markdown table and a PNG to
benchmarks/results/logprobs{,_cuda}.{json,md,png} (or `--out`).
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
# Issue 22: at this shape, lowtune's fwd+bwd must be no slower than these and reach TARGET_SHARE of the matmul rate.
HEADLINE_SHAPE, HEADLINE_VARIANTS = "Llama-3-8B", ["lowtune", "trl_chunked", "liger_flce"]
TARGET_SHARE = 0.5
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


def matmul_worker(args) -> dict:
    """The device's matmul rate in the benchmark's dtype: median time of an n×n @ n×n product."""
    n = args.matmul_n
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 1  # one bf16 product takes ~1.5 ms on an H200: time 20 back to back
    times = []
    for i in range(args.runs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first is the warm-up
            times.append((time.perf_counter() - t0) / reps)
    t = statistics.median(times)
    return {"n": n, "time_s": t, "times_s": times, "tflops": 2 * n**3 / t / 1e12}


def flops(row: dict) -> int:
    """The work of one call: 2·N·H·V for the logits, twice that with the gradient of hidden."""
    n, h, v = row["nhv"]
    return (4 if row["mode"] == "fwd+bwd" else 2) * n * h * v


def tflops(row: dict) -> float:
    return flops(row) / row["time_s"] / 1e12


def share(row: dict, report: dict) -> float | None:
    """The row's TFLOP/s as a share of the measured matmul rate (None when that was not measured)."""
    return tflops(row) / report["matmul_tflops"] if report.get("matmul_tflops") else None


def _cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process's finished children)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy / os.sysconf("SC_CLK_TCK"), children.ru_utime + children.ru_stime


def run_measured(cmd: list[str], timeout: float | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run a worker; also return how many cores other processes kept busy meanwhile (CPU timings are only
    comparable when that is ~0: on 2 cores, one busy neighbour can double a time)."""
    busy0, own0 = _cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
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


def plan(shapes: list[str], variants: list[str], modes: list[str]) -> list[tuple[str, str, str]]:
    """(shape, variant, mode) in run order: issue 22's comparison first, then shape by shape."""
    every = [(s, v, m) for s in shapes for v in variants for m in modes]
    first = [(HEADLINE_SHAPE, v, "fwd+bwd") for v in HEADLINE_VARIANTS if (HEADLINE_SHAPE, v, "fwd+bwd") in every]
    return first + [k for k in every if k not in first]


def measure(args, extra: list[str], deadline: float | None) -> dict:
    """One worker's measurements (rerun on CPU while other processes were busy), or {"skipped": why}."""
    cmd = [sys.executable, __file__, "--worker", "--device", args.device, "--dtype", args.dtype]
    cmd += ["--runs", str(args.runs), *extra]
    for attempt in range(args.retries + 1):
        timeout = args.timeout if deadline is None else min(args.timeout, deadline - time.monotonic())
        if timeout <= 0:
            return {"skipped": "time budget spent (--budget)"}
        try:
            proc, others = run_measured(cmd, timeout)
        except subprocess.TimeoutExpired:
            return {"skipped": f"timed out after {timeout:.3g} s"}
        if args.device == "cuda" or others <= args.max_others or attempt == args.retries:
            break
        print(f"  other processes used {others:.2f} cores: retrying once they are idle", flush=True)
        wait_idle(args.max_others)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"skipped": f"failed: {err}"}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "others_cores": round(others, 3)}


def run_all(args) -> dict:
    shapes = args.shapes or (
        [s for s in SHAPES if s != "tiny"] if args.device == "cuda" else ["SmolLM2-135M", "Qwen2.5-0.5B"]
    )
    deadline = None if args.budget is None else time.monotonic() + args.budget
    results = []
    report = {
        "machine": machine_info(("trl", "triton", "liger_kernel")),
        "device": args.device,
        "dtype": args.dtype,
        "runs": args.runs,
        "head": "frozen (hidden requires grad in fwd+bwd; fwd runs under no_grad)",
        "results": results,
    }
    matmul = measure(args, ["--mode", "matmul", "--matmul-n", str(args.matmul_n)], deadline)
    report["matmul"], report["matmul_tflops"] = matmul, matmul.get("tflops")
    done = matmul.get("skipped") or f"{matmul['tflops']:.3g} TFLOP/s (n={matmul['n']})"
    print(f"{'matmul':14} {args.dtype:26} {'':8} {done}", flush=True)
    save(report, args.out)
    for shape, variant, mode in plan(shapes, args.variants or VARIANTS, args.modes or MODES):
        row = {"shape": shape, "nhv": SHAPES[shape], "variant": variant, "mode": mode}
        why = unavailable(variant, args.device)
        if why:
            r = {**row, "skipped": why}
        else:
            r = {**row, **measure(args, ["--shape", shape, "--variant", variant, "--mode", mode], deadline)}
        if "skipped" in r:
            done = r["skipped"]
        else:
            r["tflops"], r["matmul_share"] = tflops(r), share(r, report)
            part = r["matmul_share"]
            rate = f"{r['tflops']:.3g} TFLOP/s" + (f" ({part:.0%} of matmul)" if part is not None else "")
            done = f"{r['time_s']:.3f} s  {r['peak_mib']:.0f} MiB  {rate}  (others {r['others_cores']:.2f} cores)"
        results.append(r)
        print(f"{shape:14} {variant:26} {mode:8} {done}", flush=True)
        save(report, args.out)
    return report


def save(report: dict, out: Path) -> None:
    """Write the JSON and the Markdown table (rewritten after every row: an interrupted run keeps its rows)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / ("logprobs" if report["device"] == "cpu" else f"logprobs_{report['device']}")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))


def _ordered(report: dict) -> tuple[list[str], list[str]]:
    """The shapes and variants present, in SHAPES and VARIANTS order (whatever order they ran in)."""
    shapes = {r["shape"] for r in report["results"]}
    variants = {r["variant"] for r in report["results"]}
    return [s for s in SHAPES if s in shapes], [v for v in VARIANTS if v in variants]


def markdown(report: dict) -> str:
    m = report["machine"]
    where = describe(m).rsplit("; torch", 1)[0]
    others = [r["others_cores"] for r in report["results"] if "others_cores" in r]
    busy = f" Other processes kept at most {max(others):.2f} cores busy during any variant." if others else ""
    mm = report.get("matmul") or {}
    if "tflops" in mm:
        rate = (
            f" Matmul rate: {mm['tflops']:.3g} TFLOP/s ({mm['n']:,}×{mm['n']:,} @ {mm['n']:,}×{mm['n']:,} in "
            f"{report['dtype']}, median of {report['runs']}); TFLOP/s cells give its share in parentheses."
        )
    else:
        rate = " Matmul rate " + (mm.get("skipped") or "not measured") + ": no shares."
    lines = [
        f"Per-token log-probs, {report['dtype']}, frozen head, on {where}; torch "
        f"{m['torch']}, trl {m['trl']}. Median of {report['runs']} runs after a warm-up; "
        "memory is the peak above the inputs (CUDA max-allocated, CPU peak RSS)." + busy + rate,
        "",
        "| shape (N, H, V) | variant | fwd time | fwd memory | fwd TFLOP/s | fwd+bwd time "
        "| fwd+bwd memory | fwd+bwd TFLOP/s | fwd+bwd vs naive (time, memory) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["shape"], r["variant"], r["mode"]): r for r in report["results"]}
    shapes, variants = _ordered(report)
    for shape in shapes:
        naive = by_key.get((shape, "naive", "fwd+bwd"), {})
        for variant in variants:
            cells = []
            for mode in MODES:
                r = by_key.get((shape, variant, mode), {"skipped": "not run"})
                if "skipped" in r:
                    cells += ["–", "–", "–"]
                else:
                    part = share(r, report)
                    rate = f"{tflops(r):.3g}" + (f" ({part:.0%})" if part is not None else "")
                    cells += [f"{r['time_s']:.2f} s", f"{r['peak_mib']:,.0f} MiB", rate]
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
        "lowtune: `lowtune.kernels.token_logprobs` (Triton on CUDA), lowtune_torch: its PyTorch path. "
        "TFLOP/s: 2·N·H·V FLOPs (the logits) per fwd, 4·N·H·V (+ the gradient of hidden) per fwd+bwd.",
        "",
        *targets(report),
    ]
    return "\n".join(lines) + "\n"


def targets(report: dict) -> list[str]:
    """Issue 22's targets at the Llama-3-8B shape, fwd+bwd, on CUDA: met / NOT met, and by how much."""
    goal = (
        f"Target (issue 22): lowtune's fwd+bwd at the {HEADLINE_SHAPE} shape on CUDA reaches at least "
        f"{TARGET_SHARE:.0%} of the matmul rate, and takes no more time than trl_chunked and liger_flce and no "
        "more memory than liger_flce"
    )
    rows = {r["variant"]: r for r in report["results"] if (r["shape"], r["mode"]) == (HEADLINE_SHAPE, "fwd+bwd")}
    ours = rows.get("lowtune", {})
    if report["device"] != "cuda":
        return [goal + ": not measured here (needs `--device cuda`)."]
    if "time_s" not in ours:
        return [goal + f": not measured (lowtune: {ours.get('skipped', 'not run')})."]
    lines = [goal + ":", ""]
    part = share(ours, report)
    if part is None:
        lines.append("- matmul share: not measured (no matmul rate)")
    else:
        need = flops(ours) / (TARGET_SHARE * report["matmul_tflops"] * 1e12)
        verdict = "met" if part >= TARGET_SHARE else f"**NOT met**: needs ≤ {need:.3f} s"
        lines.append(
            f"- matmul share: {part:.1%} vs ≥ {TARGET_SHARE:.0%} ({tflops(ours):.3g} of "
            f"{report['matmul_tflops']:.3g} TFLOP/s, {ours['time_s']:.3f} s): {verdict}, "
            f"{100 * (part - TARGET_SHARE):+.1f} points"
        )
    for other, key, what in [
        ("trl_chunked", "time_s", "time"),
        ("liger_flce", "time_s", "time"),
        ("liger_flce", "peak_mib", "memory"),
    ]:
        theirs = rows.get(other, {})
        if key not in theirs:
            lines.append(f"- {what} ≤ {other}'s: not measured ({theirs.get('skipped', 'not run')})")
            continue
        ratio = ours[key] / theirs[key]
        values = (
            f"{ours[key]:.3f} vs {theirs[key]:.3f} s"
            if key == "time_s"
            else f"{ours[key]:,.0f} vs {theirs[key]:,.0f} MiB"
        )
        lines.append(f"- {what} ≤ {other}'s: {values} ({ratio:.2f}×): " + ("met" if ratio <= 1 else "**NOT met**"))
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if "skipped" not in r]
    shapes, variants = _ordered({"results": rows})
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
    p.add_argument("--modes", nargs="*", choices=MODES)
    p.add_argument("--timeout", type=float, default=600, help="seconds before a worker is stopped (its row skipped)")
    p.add_argument("--budget", type=float, help="seconds for the whole run: no worker starts after it (rows skipped)")
    p.add_argument(
        "--matmul-n", type=int, help="size of the matmul that measures the device's rate (CUDA 8192, CPU 2048)"
    )
    p.add_argument("--from-json", type=Path, help="only rewrite the table and plot from this results file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.matmul_n = args.matmul_n or (8192 if args.device == "cuda" else 2048)
    if args.worker:
        print(json.dumps(matmul_worker(args) if args.mode == "matmul" else worker(args)))
        return
    report = json.loads(args.from_json.read_text()) if args.from_json else run_all(args)
    save(report, args.out)
    suffix = "" if report["device"] == "cpu" else f"_{report['device']}"
    plot(report, args.out / f"logprobs{suffix}.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
