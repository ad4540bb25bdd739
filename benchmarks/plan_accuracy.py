"""How far `lowtune plan` is from the measured peak: predicted vs measured tensor peak, per method and shape.

    python benchmarks/plan_accuracy.py           # GPU points + CPU points (tiny-random and the builtin model)
    python benchmarks/plan_accuracy.py --quick   # tiny-random only (CPU points), for the tests

- GPU points: each lowtune measurement in benchmarks/results/throughput_cuda.json (NVIDIA H200, NF4 + LoRA r16,
  torch.cuda.max_memory_allocated from the start of training) is planned here, on this CPU, for CUDA, with the
  same recipe and data as that run (benchmarks/throughput.py: `lowtune_overrides`, the same data writers, the
  shape's published config and the builtin model's tokenizer, as the run used).
- CPU points: SFT, DPO, KTO, ORPO, GRPO, RLOO and PPO on tiny-random and on the builtin SmolLM2-135M: planned,
  then run for three steps with the same tensor tracker on the real tensors (lowtune.plan.trace.tensor_peak_callback).
- Planning time for an 8B shape (Llama-3.1-8B's published config), SFT 4 × 1,024 and GRPO 8 × 512, on CUDA.

Writes benchmarks/results/plan_accuracy.{json,md,png}: `points` (device, gpu, method, shape, predicted_mb,
measured_mb, rel_error = (predicted − measured) / measured) and `planning_seconds`.
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

from benchmarks.machine import describe, machine_info, markdown_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CPU_METHODS = ("sft", "dpo", "kto", "orpo", "grpo", "rloo", "ppo")
STEPS = 3  # the measured peak is over the first three steps (each method's first generation included)
# Llama-3.1-8B's published config.json (meta-llama/Llama-3.1-8B).
LLAMA_8B = dict(
    model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
    rope_scaling=dict(rope_type="llama3", factor=8.0, high_freq_factor=4.0, low_freq_factor=1.0,
                      original_max_position_embeddings=8192),
    rms_norm_eps=1e-5, tie_word_embeddings=False,
)  # fmt: skip


def model_dir(root: Path, name: str, shape: dict) -> Path:
    """A directory with the shape's config.json and the builtin model's tokenizer (no weights: plans need none)."""
    from transformers import AutoConfig, AutoTokenizer

    from lowtune import builtin

    out = root / name
    if not (out / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(builtin.ensure("smollm2-135m-instruct"))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
        AutoConfig.for_model(**shape, **ids).save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def point(device, gpu, method, shape, predicted, measured, seconds, source) -> dict:
    return {"device": device, "gpu": gpu, "method": method, "shape": shape, "predicted_mb": round(predicted, 1),
            "measured_mb": round(measured, 1), "rel_error": round((predicted - measured) / measured, 4),
            "planning_seconds": seconds, "measured_in": source}  # fmt: skip


def gpu_points(root: Path) -> list[dict]:
    """Plan each lowtune measurement of throughput_cuda.json for CUDA, with that run's recipe and data."""
    from benchmarks import throughput
    from lowtune import builtin, plan
    from lowtune.config import load_recipe

    report = json.loads((RESULTS / "throughput_cuda.json").read_text())
    settings, gpu = report["settings"], report["machine"]["gpu"]
    tokenizer = str(builtin.ensure("smollm2-135m-instruct"))
    out = []
    for row in report["measurements"]:
        if row["variant"] != "lowtune" or not row.get("cuda_max_allocated_mb"):
            continue
        method, shape, work = row["method"], row["shape"], settings["work"][row["method"]]
        data = ""
        if method in ("sft", "dpo"):
            data = root / f"{method}-{work['length']}.jsonl"
            if not data.is_file():
                n = work["batch"] * (settings["steps"] + 2)
                (throughput.write_sft_rows if method == "sft" else throughput.write_pairs)(
                    data, tokenizer, n, work["length"]
                )
        spec = dict(method=method, model=str(model_dir(root, shape, settings["shapes"][shape])), precision="nf4",
                    gc=None, workdir=str(root / "runs"), steps=settings["steps"], data=str(data), **work)  # fmt: skip
        recipe = load_recipe(ROOT / "recipes" / f"{method}.yaml", throughput.lowtune_overrides(spec))
        p = plan.plan(recipe, device="cuda")
        out.append(point("cuda", gpu, method, shape, p.tensor_peak_mb, row["cuda_max_allocated_mb"], p.seconds,
                         "benchmarks/results/throughput_cuda.json"))  # fmt: skip
        say(out[-1])
    return out


def cpu_points(root: Path, models: list[str]) -> list[dict]:
    """Plan, then run three steps with the tensor tracker on the real tensors; the same recipe both times."""
    from lowtune import plan, recipes, training
    from lowtune.config import load_recipe
    from lowtune.plan.trace import tensor_peak_callback

    out = []
    for model in models:
        for method in CPU_METHODS:
            overrides = [f"model.name={model}", f"train.max_steps={STEPS}", "eval.task=null", "train.save_steps=1000",
                         f"output.dir={root / 'runs'}", "output.quiet=true"]  # fmt: skip
            if model == "tiny-random":
                overrides.append("data.n_train=32")
            recipe = load_recipe(ROOT / "recipes" / f"{method}.yaml", overrides)
            p = plan.plan(recipe, device="cpu")
            if method == "grpo":  # the plan is the worst step, every completion with signal: the run skips none
                overrides.append("train.skip_zero_advantage=false")
            callback = tensor_peak_callback(STEPS)
            fit = training.fit

            def fit_measured(trainer, *args, callback=callback, fit=fit):
                trainer.add_callback(callback)
                return fit(trainer, *args)

            training.fit = fit_measured
            try:
                recipes.train(load_recipe(ROOT / "recipes" / f"{method}.yaml", overrides))
            finally:
                training.fit = fit
            out.append(point("cpu", None, method, model, p.tensor_peak_mb, callback.peak / 2**20, p.seconds,
                             f"this run: {STEPS} steps, tensors traced"))  # fmt: skip
            say(out[-1])
    return out


def planning_seconds(root: Path) -> dict:
    """Planning time of an 8B shape on this CPU (the whole `plan` call: config, tokenizer, data, trainer, trace)."""
    from lowtune import plan
    from lowtune.config import load_recipe

    model = str(model_dir(root, "llama-3.1-8b", LLAMA_8B))
    data = root / "sft-1024.jsonl"
    if not data.is_file():
        from benchmarks import throughput
        from lowtune import builtin

        throughput.write_sft_rows(data, str(builtin.ensure("smollm2-135m-instruct")), 12, 1024)
    cases = {
        "sft 4 x 1024": ("sft", [f"data.source={data}", "data.format=text", "train.max_length=1024",
                                 "train.per_device_train_batch_size=4"]),
        "grpo 8 x 512": ("grpo", ["train.max_completion_length=512", "train.num_generations=8",
                                  "train.per_device_train_batch_size=8"]),
    }  # fmt: skip
    out = {}
    for name, (method, extra) in cases.items():
        recipe = load_recipe(ROOT / "recipes" / f"{method}.yaml", [f"model.name={model}", *extra])
        began = time.perf_counter()
        p = plan.plan(recipe, device="cuda")
        out[name] = {"seconds": round(time.perf_counter() - began, 1), "tensor_peak_mb": round(p.tensor_peak_mb, 1)}
        say({name: out[name]})
    return out


def say(what) -> None:
    print(what, flush=True)


def write(stem: Path, report: dict) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [[p["device"] + (f" ({p['gpu']})" if p["gpu"] else ""), p["method"], p["shape"], f"{p['predicted_mb']:,.1f}",
             f"{p['measured_mb']:,.1f}", f"{p['rel_error']:+.1%}", f"{p['planning_seconds']:.0f}"]
            for p in report["points"]]  # fmt: skip
    worst = max(abs(p["rel_error"]) for p in report["points"])
    lines = [f"Planned on: {describe(report['machine'])}", "",
             *markdown_table(["device", "method", "shape", "predicted MiB", "measured MiB", "error", "plan s"], rows),
             "", f"Largest error: {worst:.1%} of the measured peak (target: within ±10%)."]  # fmt: skip
    if report.get("planning_seconds"):
        lines += ["", "Planning an 8B shape (Llama-3.1-8B config, CUDA, NF4) on this CPU:", ""]
        lines += [f"- {name}: {v['seconds']} s (tensor peak {v['tensor_peak_mb']:,.0f} MiB)"
                  for name, v in report["planning_seconds"].items()]  # fmt: skip
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for device, color in (("cuda", "#2a7"), ("cpu", "#27a")):
        pts = [p for p in report["points"] if p["device"] == device]
        ax.scatter([p["measured_mb"] for p in pts], [p["predicted_mb"] for p in pts], color=color, label=device)
    values = [v for p in report["points"] for v in (p["measured_mb"], p["predicted_mb"])]
    lo, hi = min(values) * 0.8, max(values) * 1.25
    ax.plot([lo, hi], [lo, hi], color="#888", lw=1)
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="#ddd", alpha=0.5, label="±10%")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("measured tensor peak (MiB)"), ax.set_ylabel("predicted (MiB)")
    ax.set_title(f"lowtune plan — planned on {describe(report['machine'])}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny-random CPU points only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from lowtune.logs import quiet_libraries

    quiet_libraries()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        points = [] if args.quick else gpu_points(root)
        points += cpu_points(root, ["tiny-random"] if args.quick else ["tiny-random", "smollm2-135m-instruct"])
        seconds = {} if args.quick else planning_seconds(root)
    machine = machine_info(("transformers", "trl", "peft", "bitsandbytes"))
    report = {"benchmark": "plan_accuracy", "machine": machine, "points": points, "planning_seconds": seconds,
              "wall_time_s": round(time.perf_counter() - began, 1)}  # fmt: skip
    write(args.out / "plan_accuracy", report)
    say(f"wrote {args.out / 'plan_accuracy'}.{{json,md,png}}")


if __name__ == "__main__":
    main()
