"""What `lowtune merge`'s verification measures on correct and on broken merges: the figures behind
MERGE_TOLERANCE.

    python benchmarks/merge_verification.py                 # trains the quick start first (about 15 min on CPU)
    python benchmarks/merge_verification.py --run runs/sft  # or uses an existing quick-start run

Two models: tiny-random with the tests/test_merge.py adapter (q_proj and v_proj, 4 steps at lr 3e-2,
trained here in seconds) and the builtin SmolLM2-135M-Instruct with the quick-start adapter. Every case
is one call of lowtune.export.merge.merge itself, saved in fp32, fp16 and bf16, with a fault injected
where the case says so (as tests/test_merge.py injects them):

- correct: the merge as it is;
- noise 2^-16 / 2^-12: the saved model's weights, as `merge` reloads them, times (1 + r N(0, 1)): the
  size of float32 arithmetic noise (2^-16 is 128 ulp of float32), a correct merge computed another way;
- scale x1.05 / x1.1 / x2: every LoRA scale multiplied before merging (the reference, base + adapter,
  is taken before): broken merges;
- x0 (fp32 only): the adapter dropped, for the size of what the adapter changes.

For each: mean KL(base + adapter || merged) over every probe position and the max total variation at
any one position (what `merge` checks, with its own probe_logprobs, compare, PROBES, MERGE_TOLERANCE),
the whole-vocabulary max abs log-prob difference (the check `merge` used before), and whether `merge`
passed. Writes benchmarks/results/merge_verification.{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine_info, markdown_table, train_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DTYPE_ORDER = ["fp32", "fp16", "bf16"]
# (case, LoRA scale factor, relative weight noise)
CASES = [
    ("correct", 1.0, 0.0),
    ("noise 2^-16", 1.0, 2**-16),
    ("noise 2^-12", 1.0, 2**-12),
    ("scale x1.05", 1.05, 0.0),
    ("scale x1.1", 1.1, 0.0),
    ("scale x2", 2.0, 0.0),
]
DROPPED = ("adapter dropped (x0)", 0.0, 0.0)
TINY_OVERRIDES = [  # as tests/test_merge.py's run_dir fixture
    "model.name=tiny-random",
    "data.n_train=32",
    "train.max_steps=4",
    "train.learning_rate=3e-2",
    "train.per_device_train_batch_size=4",
    "lora.target_modules=[q_proj, v_proj]",
    "eval.task=null",
]


def measure(run: Path, dtype: str, scale: float, noise: float) -> dict:
    """One `merge` of `run` saved in `dtype`, with the LoRA scales times `scale` and the reloaded weights
    times (1 + noise N(0, 1)); its verification figures, the old max abs figure and whether it passed."""
    import torch
    from peft.tuners.lora import LoraModel
    from transformers import AutoModelForCausalLM

    from lowtune.errors import LowtuneError
    from lowtune.export import merge as m

    calls: list = []
    probe, merge_and_unload, load = m.probe_logprobs, LoraModel.merge_and_unload, AutoModelForCausalLM.from_pretrained

    def recording(*args):  # the reference (base + adapter), then the saved model reloaded
        calls.append(probe(*args))
        return calls[-1]

    def wrong_scale(self, *args, **kwargs):
        for module in self.modules():
            if isinstance(getattr(module, "scaling", None), dict):
                module.scaling = {k: v * scale for k, v in module.scaling.items()}
        return merge_and_unload(self, *args, **kwargs)

    with tempfile.TemporaryDirectory(prefix="merge-bench-") as tmp, contextlib.ExitStack() as stack:

        def perturbed(path, *args, **kwargs):  # only the merged model, which merge stages under tmp
            model = load(path, *args, **kwargs)
            if Path(path).is_relative_to(tmp):
                generator = torch.Generator().manual_seed(0)
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(1 + noise * torch.randn(p.shape, generator=generator))
            return model

        stack.enter_context(mock.patch.object(m, "probe_logprobs", recording))
        if scale != 1.0:
            stack.enter_context(mock.patch.object(LoraModel, "merge_and_unload", wrong_scale))
        if noise:
            stack.enter_context(mock.patch.object(AutoModelForCausalLM, "from_pretrained", perturbed))
        start = time.perf_counter()
        try:
            m.merge(run, Path(tmp) / "merged", dtype=dtype)
            passed = True
        except LowtuneError as e:
            if "beyond tolerance" not in str(e):
                raise
            passed = False
        seconds = time.perf_counter() - start
    reference, merged = calls
    ref, oth = torch.cat(reference), torch.cat(merged)
    return {
        **m.compare(reference, merged),
        "max_abs_logprob_diff": (ref - oth).abs().max().item(),
        "passed": passed,
        "positions": ref.shape[0],
        "vocab": ref.shape[1],
        "seconds": round(seconds, 1),
    }


def measure_model(label: str, run: Path) -> dict:
    from lowtune.export.merge import MERGE_TOLERANCE

    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    cases = []
    for dtype in DTYPE_ORDER:
        for name, scale, noise in [*CASES, *([DROPPED] if dtype == "fp32" else [])]:
            result = {"case": name, "dtype": dtype, "lora_scale_factor": scale, "weight_noise": noise}
            result.update(measure(run, dtype, scale, noise))
            result["limits"] = dict(MERGE_TOLERANCE[dtype])
            cases.append(result)
            print(
                f"{label:8s} {dtype} {name:22s} mean KL {result['mean_kl']:9.2e}"
                f"  max TV {result['max_total_variation']:9.2e}"
                f"  max abs {result['max_abs_logprob_diff']:9.2e}  {'passed' if result['passed'] else 'FAILED'}"
                f"  {result['seconds']:.0f} s",
                flush=True,
            )
    return {
        "model": label,
        "run": str(run),
        "base_model": summary.get("model"),
        "steps": summary.get("steps"),
        "learning_rate": _recipe_value(run, "learning_rate"),
        "lora": {k: adapter_config.get(k) for k in ("r", "lora_alpha", "target_modules")},
        "positions": cases[0]["positions"],
        "vocab": cases[0]["vocab"],
        "cases": cases,
    }


def _recipe_value(run: Path, key: str):
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    return (config.get("train") or {}).get(key)


def _fmt(x: float) -> str:
    return f"{x:.1e}" if x >= 0 else f"{x:.1e} (rounding)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a quick-start run directory (default: train the quick start)")
    parser.add_argument("--out", type=Path, default=RESULTS / "merge_verification")
    parser.add_argument("--replot", action="store_true", help="only rewrite OUT.md and OUT.png from OUT.json")
    args = parser.parse_args()
    stem = args.out
    if args.replot:
        write_tables(stem, json.loads(stem.with_suffix(".json").read_text()))
        return

    import torch

    from lowtune.export.merge import MERGE_TOLERANCE, PROBES

    info = machine_info(("transformers", "peft"))
    start = time.perf_counter()
    models = []
    with tempfile.TemporaryDirectory(prefix="merge-bench-runs-") as runs:
        tiny = train_run(ROOT / "recipes" / "sft.yaml", "merge-bench-tiny", [*TINY_OVERRIDES, f"output.dir={runs}"])
        models.append(measure_model("tiny-random", tiny))
        smol = args.run or train_run(ROOT / "recipes" / "sft.yaml", "merge-bench", [f"output.dir={runs}"])
        models.append(measure_model("SmolLM2-135M", smol.resolve()))
    report = {
        "benchmark": "merge_verification",
        "machine": info,
        "torch_threads": torch.get_num_threads(),
        "probes": PROBES,
        "reference": "unmerged base + adapter in float32 (PEFT), as lowtune merge computes it",
        "tolerance": MERGE_TOLERANCE,
        "seconds": round(time.perf_counter() - start, 1),
        "models": models,
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_tables(stem, report)


def write_tables(stem: Path, report: dict) -> None:
    """stem.md (the table, with the machine) and stem.png from the report."""
    info, models = report["machine"], report["models"]
    columns = ["model", "saved", "case", "mean KL", "max TV", "old max abs Δ log-prob", "limits (KL, TV)", "merge"]
    rows = []
    for model in models:
        for c in model["cases"]:
            limits = c["limits"]
            rows.append(
                [
                    model["model"],
                    c["dtype"],
                    c["case"],
                    _fmt(c["mean_kl"]),
                    _fmt(c["max_total_variation"]),
                    _fmt(c["max_abs_logprob_diff"]),
                    f"{limits['mean_kl']:g}, {limits['max_total_variation']:g}",
                    "passed" if c["passed"] else "failed",
                ]
            )
    lines = [
        f"Machine: {describe(info)}. Each row is one `lowtune merge` (lowtune.export.merge.merge) with the",
        "fault named injected; reference: the unmerged base + adapter in float32. Mean KL over every",
        f"position of the {len(report['probes'])} chat-templated probes, max TV at any one position, and the",
        "whole-vocabulary max abs log-prob difference (the check used before). A negative mean KL is float",
        "rounding around 0 (the float32 log-softmax sums to 1 only to rounding).",
        "",
        *(
            f"- {m['model']}: {m['positions']} positions, vocabulary {m['vocab']}; adapter r={m['lora']['r']}, "
            f"alpha={m['lora']['lora_alpha']}, {m['steps']} steps at lr {m['learning_rate']}"
            for m in models
        ),
        "",
        *markdown_table(columns, rows),
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(stem.with_suffix(".png"), models, report["tolerance"], describe(info))
    print("\n".join(lines))


def _plot(path: Path, models: list[dict], tolerance: dict, machine: str) -> None:
    """Mean KL and max TV per case and saved dtype, limits dashed; values <= 1e-12 drawn at 1e-12."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"fp32": "#27a", "fp16": "#2a7", "bf16": "#c73"}
    markers = {"tiny-random": "s", "SmolLM2-135M": "o"}
    names = [c[0] for c in CASES] + [DROPPED[0]]
    floor = 1e-12
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = [("mean_kl", "mean KL (nats)"), ("max_total_variation", "max total variation")]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for i, dtype in enumerate(DTYPE_ORDER):
            ax.axhline(tolerance[dtype][key], color=colors[dtype], ls="--", lw=1, label=f"{dtype} limit")
            for model in models:
                cases = [c for c in model["cases"] if c["dtype"] == dtype]
                xs = [names.index(c["case"]) + (i - 1) * 0.2 for c in cases]
                ys = [max(c[key], floor) for c in cases]
                fill = colors[dtype] if model["model"] != "tiny-random" else "none"
                ax.scatter(
                    xs, ys, marker=markers[model["model"]], s=22, edgecolors=colors[dtype], facecolors=fill,
                    label=f"{model['model']} {dtype}",
                )  # fmt: skip
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(label)
    note = "drawn at 1e-12: mean KL <= 1e-12 (rounding)"
    axes[0].text(0.02, 0.97, note, transform=axes[0].transAxes, fontsize=6, va="top")
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle(f"lowtune merge verification: correct vs broken merges — {machine}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
