"""`lowtune plan` on a GPU: a sweep of predicted against measured peaks, and `--fit` under real memory caps.

    python benchmarks/plan_gpu.py                 # on a CUDA machine (about 10 minutes on an H200)
    python benchmarks/plan_gpu.py --dry-run-cpu   # the same code path on tiny shapes, on this CPU

1. Sweep: 14 configurations — SFT, DPO and GRPO × per-device batch × length × gradient checkpointing, at the
   Qwen2.5-0.5B, Llama-3.2-1B, Qwen2.5-1.5B and Qwen2.5-3B shapes (random weights from the published configs,
   NF4 + LoRA r16, as benchmarks/throughput.py builds them). Each is planned (`lowtune.plan.plan`, device cuda)
   and then run for 3 steps in a fresh process; the point is predicted vs torch.cuda.max_memory_allocated.
2. Fit: SFT at the Qwen2.5-3B shape with 16 × 1,024 tokens per device is fitted to caps of 6, 8, 12 and
   16 GiB (`lowtune.plan.fit`), then each choice runs 20 steps with the cap enforced by
   torch.cuda.set_per_process_memory_fraction: no out-of-memory error, and the share of the cap it used.

Writes benchmarks/results/plan_gpu.{json,md,png} with the GPU's name (the figures to reach: every sweep point
within ±10%, zero OOM, each fitted run using ≥ 70% of its cap).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import throughput  # noqa: E402
from benchmarks.machine import describe, machine_info, markdown_table  # noqa: E402
from benchmarks.plan_accuracy import write as write_scatter  # noqa: E402

# Qwen/Qwen2.5-3B's published config.json.
QWEN_3B = dict(
    model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)  # fmt: skip
SHAPES = {**throughput.SHAPES, "qwen2.5-3b": QWEN_3B}
# (shape, method, work, gradient checkpointing: None = lowtune's default, on with CUDA)
SWEEP = [
    ("qwen2.5-0.5b", "sft", dict(batch=8, length=512), None),
    ("qwen2.5-0.5b", "sft", dict(batch=2, length=2048), None),
    ("qwen2.5-0.5b", "sft", dict(batch=4, length=1024), False),
    ("qwen2.5-0.5b", "dpo", dict(batch=4, length=512), None),
    ("llama-3.2-1b", "sft", dict(batch=8, length=1024), None),
    ("llama-3.2-1b", "sft", dict(batch=2, length=1024), False),
    ("llama-3.2-1b", "dpo", dict(batch=2, length=1024), None),
    ("llama-3.2-1b", "grpo", dict(batch=8, num_generations=8, max_completion_length=128), None),
    ("qwen2.5-1.5b", "sft", dict(batch=4, length=2048), None),
    ("qwen2.5-1.5b", "dpo", dict(batch=1, length=2048), None),
    ("qwen2.5-1.5b", "grpo", dict(batch=16, num_generations=8, max_completion_length=128), None),
    ("qwen2.5-3b", "sft", dict(batch=4, length=1024), None),
    ("qwen2.5-3b", "sft", dict(batch=2, length=1024), False),
    ("qwen2.5-3b", "dpo", dict(batch=2, length=1024), None),
]
CAPS_GIB = (6, 8, 12, 16)
FIT = ("qwen2.5-3b", "sft", dict(batch=16, length=1024))
FIT_STEPS = 20
DRY = dict(shape="tiny-qwen2", work={"sft": dict(batch=4, length=64), "dpo": dict(batch=2, length=128),
                                     "grpo": dict(batch=4, num_generations=4, max_completion_length=16)})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run-cpu", action="store_true", help="tiny shapes on this CPU, no caps")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the builtin model's)")
    args = parser.parse_args()
    import torch

    from lowtune import builtin, plan
    from lowtune.config import load_recipe

    dry = args.dry_run_cpu
    if not dry and not torch.cuda.is_available():
        raise SystemExit("plan_gpu.py needs a CUDA device; --dry-run-cpu runs the code path here")
    tokenizer = args.tokenizer or str(builtin.ensure("smollm2-135m-instruct"))
    device = "cpu" if dry else "cuda"
    began = time.perf_counter()
    points, fits = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def prepare(shape: str, method: str, work: dict, gc, i: int, **extra) -> dict:
            model_dir = root / shape
            if not (model_dir / "config.json").is_file():
                spec = dict(side="build", shape=throughput.TINY_SHAPE if dry else SHAPES[shape], tokenizer=tokenizer,
                            out=str(model_dir), workdir=str(root / f"build-{shape}"))  # fmt: skip
                built = throughput.run_worker(spec, 900)
                if "error" in built:
                    raise SystemExit(f"{shape}: {built['error']}")
            data = ""
            if method in ("sft", "dpo"):
                data = root / f"{method}-{work['length']}-{work['batch']}.jsonl"
                if not data.is_file():
                    writer = throughput.write_sft_rows if method == "sft" else throughput.write_pairs
                    writer(data, tokenizer, work["batch"] * (FIT_STEPS + 2), work["length"])
            return dict(side="lowtune", method=method, model=str(model_dir), precision="nf4", gc=gc,
                        workdir=str(root / f"run-{i}"), steps=3, data=str(data), **work, **extra)  # fmt: skip

        sweep = [(DRY["shape"], m, DRY["work"][m], gc) for _, m, _, gc in SWEEP[:6]] if dry else SWEEP
        for i, (shape, method, work, gc) in enumerate(sweep):
            spec = prepare(shape, method, work, gc, i)
            predicted = plan.plan(load_recipe(ROOT / "recipes" / f"{method}.yaml", throughput.lowtune_overrides(spec)),
                                  device=device)  # fmt: skip
            result = throughput.run_worker(spec, 900)
            measured = result.get("cuda_max_allocated_mb")  # none on the dry run: it exercises the code path only
            row = {"device": device, "gpu": machine_info()["gpu"], "method": method, "shape": shape,
                   "settings": {**work, "gradient_checkpointing": gc},
                   "predicted_mb": round(predicted.tensor_peak_mb, 1), "measured_mb": measured,
                   "planning_seconds": predicted.seconds, "error": result.get("error"),
                   "measured_in": "this run (max_memory_allocated)"}  # fmt: skip
            if measured:
                row["rel_error"] = round((row["predicted_mb"] - measured) / measured, 4)
            points.append(row)
            print(row, flush=True)
        if not dry:
            shape, method, work = FIT
            for j, cap in enumerate(CAPS_GIB):
                spec = prepare(shape, method, work, None, 100 + j)
                found = plan.fit(ROOT / "recipes" / f"{method}.yaml", throughput.lowtune_overrides(spec), cap * 1024,
                                 device="cuda")  # fmt: skip
                spec = {**spec, "steps": FIT_STEPS, "memory_cap_mb": cap * 1024, "extra_overrides": found.overrides}
                result = throughput.run_worker(spec, 900)
                reserved = result.get("cuda_max_reserved_mb")
                error = result.get("error") or ""
                fits.append({
                    "cap_gib": cap, "overrides": found.overrides, "planned_total_mb": round(found.plan.total_mb, 1),
                    "measured_max_allocated_mb": result.get("cuda_max_allocated_mb"),
                    "measured_max_reserved_mb": reserved,
                    "used_share_of_cap": reserved and round(reserved / (cap * 1024), 3),
                    "out_of_memory": "OutOfMemory" in error or "out of GPU memory" in error, "error": error or None,
                })  # fmt: skip
                print(fits[-1], flush=True)
    report = {"benchmark": "plan_gpu", "machine": machine_info(("transformers", "trl", "peft", "bitsandbytes")),
              "dry_run_cpu": dry, "points": [p for p in points if p.get("rel_error") is not None], "sweep": points,
              "fits": fits, "wall_time_s": round(time.perf_counter() - began, 1)}  # fmt: skip
    stem = args.out / ("plan_gpu_dry" if dry else "plan_gpu")
    stem.parent.mkdir(parents=True, exist_ok=True)
    if report["points"]:
        write_scatter(stem, {**report, "planning_seconds": {}})
    if fits:
        lines = ["", "`--fit` under enforced caps (Qwen2.5-3B SFT, 16 × 1,024 per device to start with):", "",
                 *markdown_table(["cap", "chosen", "planned", "max reserved", "share of cap", "OOM"],
                                 [[f"{f['cap_gib']} GiB", " ".join(f["overrides"]) or "as it is",
                                   f"{f['planned_total_mb'] / 1024:.2f} GiB",
                                   f"{(f['measured_max_reserved_mb'] or 0) / 1024:.2f} GiB",
                                   f"{f['used_share_of_cap'] or 0:.0%}", "yes" if f["out_of_memory"] else "no"]
                                  for f in fits])]  # fmt: skip
        with stem.with_suffix(".md").open("a") as f:
            f.write("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {stem}.{{json,md,png}} ({describe(report['machine'])})")


if __name__ == "__main__":
    main()
