"""lowtune's overhead over a plain TRL + PEFT script with identical SFT settings (s/step).

    python benchmarks/sft_overhead.py            # builtin SmolLM2-135M, 40 steps, 2 rounds each

Both sides train the same model (the cached builtin SmolLM2 directory) on the same 2,000
arithmetic rows with the same LoRA and TRL settings, each in a fresh process, alternating
(lowtune, plain, lowtune, plain, ...). Seconds per step are taken between the logs at step
`--skip` and the last step, so model loading, tokenization and warm-up are excluded. lowtune's
side includes everything it adds while training: progress bar, metrics.jsonl and a checkpoint
every 50 steps. Writes benchmarks/results/sft_overhead.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, s_per_step, write_report  # noqa: E402

SETTINGS = dict(batch=8, lr=3e-4, r=16, alpha=32, rows=2000, warmup=5)


def plain_worker(steps: int, out: Path) -> None:
    """A plain TRL + PEFT SFT script, as a user would write it, timing each log."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lowtune import builtin
    from lowtune.data import arithmetic

    path = builtin.ensure("smollm2-135m-instruct")
    # The same rows lowtune trains on (generation is outside the timed region).
    rows = [
        {
            "prompt": [{"role": "user", "content": p.question}],
            "completion": [{"role": "assistant", "content": p.solution}],
        }
        for p in arithmetic.train(SETTINGS["rows"], 2, ["+"], seed=0)
    ]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = LoraConfig(r=SETTINGS["r"], lora_alpha=SETTINGS["alpha"], target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    logs = []

    class Times(TrainerCallback):
        def on_log(self, args, state, control, logs_=None, **kw):
            logs.append({"step": state.global_step, "time": time.time()})

    args = SFTConfig(
        output_dir=str(out / "plain"),
        max_steps=steps,
        per_device_train_batch_size=SETTINGS["batch"],
        learning_rate=SETTINGS["lr"],
        warmup_steps=SETTINGS["warmup"],
        logging_steps=5,
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        seed=0,
        save_strategy="no",
    )
    SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[Times()]
    ).train()
    (out / "plain.json").write_text(json.dumps(logs))


def lowtune_worker(steps: int, out: Path) -> None:
    from lowtune import recipes
    from lowtune.config import load_recipe

    recipe = load_recipe(
        ROOT / "recipes" / "sft.yaml",
        [
            f"train.max_steps={steps}",
            f"train.per_device_train_batch_size={SETTINGS['batch']}",
            f"train.learning_rate={SETTINGS['lr']}",
            f"lora.r={SETTINGS['r']}",
            f"lora.alpha={SETTINGS['alpha']}",
            f"data.n_train={SETTINGS['rows']}",
            "eval.task=null",
            f"output.dir={out}",
            "output.name=lowtune",
        ],
    )
    run, _ = recipes.train(recipe)
    logs = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    (out / "lowtune.json").write_text(json.dumps([{"step": r["step"], "time": r["time"]} for r in logs if "loss" in r]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=10, help="measure from this step on")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", choices=["plain", "lowtune"])
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.worker:
        {"plain": plain_worker, "lowtune": lowtune_worker}[args.worker](args.steps, args.workdir)
        return

    import tempfile

    from lowtune import builtin, ui

    builtin.ensure("smollm2-135m-instruct", ui.say)
    times: dict[str, list[float]] = {"plain": [], "lowtune": []}
    for i in range(args.rounds):
        for side in ("lowtune", "plain"):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, __file__, "--worker", side, "--workdir", tmp, "--steps", str(args.steps)]
                subprocess.run(cmd, check=True, capture_output=True)
                logs = json.loads((Path(tmp) / f"{side}.json").read_text())
            times[side].append(s_per_step(logs, args.skip))
            ui.say(f"round {i + 1} {side}: {times[side][-1]:.3f} s/step")

    med = {k: statistics.median(v) for k, v in times.items()}
    overhead = med["lowtune"] / med["plain"] - 1
    report = {
        "benchmark": "sft_overhead",
        "machine": machine_info(),
        "settings": {
            **SETTINGS,
            "steps": args.steps,
            "measured_from_step": args.skip,
            "rounds": args.rounds,
            "model": "smollm2-135m-instruct",
            "precision": "fp32 (CPU) / recipe default (CUDA)",
        },
        "s_per_step": times,
        "median_s_per_step": med,
        "overhead": overhead,
    }
    rows = [
        ["plain TRL + PEFT", f"{med['plain']:.3f}", " ".join(f"{t:.3f}" for t in times["plain"]), ""],
        ["lowtune", f"{med['lowtune']:.3f}", " ".join(f"{t:.3f}" for t in times["lowtune"]), f"{overhead:+.1%}"],
    ]
    write_report(
        args.out / "sft_overhead",
        report,
        ["side", "median s/step", "each round", "overhead"],
        rows,
        bars={k: v for k, v in med.items()},
        ylabel="seconds per step",
    )
    ui.table("SFT s/step, lowtune vs plain TRL + PEFT", ["side", "median s/step", "each round", "overhead"], rows)


if __name__ == "__main__":
    main()
