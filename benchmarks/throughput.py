"""Training speed and peak memory: lowtune against plain TRL + PEFT, across precisions and shapes.

    python benchmarks/throughput.py cpu                  # SFT grid, builtin SmolLM2-135M (about 15 min on 2 cores)
    python benchmarks/throughput.py cpu --quick          # smoke run (under a minute)
    python benchmarks/throughput.py cuda --out DIR       # real shapes, random weights, one GPU (at most ~8 min)
    python benchmarks/throughput.py cuda --dry-run-cpu   # the cuda code path on a tiny shape, on the CPU
    python benchmarks/throughput.py merge A.json B.json  # one cuda report from calls that ran parts of the plan

cpu: SFT tokens/s and peak memory over a grid of precision (nf4: LoRA on a bitsandbytes 4-bit base;
bf16, fp32: LoRA on a 16-/32-bit base), gradient checkpointing (off, on) and sequence length (256,
1024). Every row is exactly the sequence length: text rows of arithmetic problems longer than it,
which TRL truncates to train.max_length. (TRL 1.16's packing does not give full rows on this data:
"bfd" fills 256-token bins with 4 rows, 208-212 tokens; "wrapped" leaves one short row per 1,000.)
Each configuration trains in a fresh process; s/step is taken between the logs at step --skip and
the last step (loading and warm-up excluded), tokens/s = batch x length / (s/step), and peak
memory is the worker's peak resident set. At --plain-precisions (lowtune's default on CPU, fp32) a
plain TRL + PEFT script with identical settings alternates with lowtune for --rounds rounds; the
overhead is the ratio of the median s/step (target: at most +5%).

cuda: for each shape (Qwen2.5-0.5B, Qwen2.5-1.5B, Llama-3.2-1B), a model with random weights built
from the published config (nothing is downloaded; the tokenizer comes from --tokenizer), saved once
in bf16; each worker loads it in NF4 (QLoRA) as lowtune does on CUDA. Peak GPU memory (max allocated
and max reserved from the start of training) and speed of lowtune's SFT, DPO and GRPO recipes
(GRPO: 8 generations x 512 tokens; random weights rarely emit EOS, so completions run the full
512: the worst case). At --compare-shape GRPO also runs as a plain TRL + PEFT + bitsandbytes script
(TRL's defaults, which turn gradient checkpointing on), and lowtune with gradient checkpointing off
and with model.logprob_kernel=lowtune. Measurements run in priority order within --budget seconds;
the JSON is rewritten after each one.

Writes throughput_{cpu,cuda}.{json,md,png} under --out (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine_info, markdown_table, s_per_step  # noqa: E402

PACKAGES = ("transformers", "trl", "peft", "bitsandbytes")
LORA = dict(r=16, alpha=32, target_modules="all-linear")
# SFT settings both sides use (set explicitly on both, so neither depends on a default).
SFT = dict(learning_rate=3e-4, lr_scheduler_type="linear", warmup_steps=1)
GRPO_PROMPTS = 64  # arithmetic prompts in the GRPO dataset (one prompt per step is used)
# precision -> lowtune's model.quantization and model.dtype. nf4 computes in lowtune's default dtype
# (bf16 on CUDA, fp32 on CPU), as QLoRA does.
PRECISIONS = {
    "nf4": dict(quantization="nf4", dtype="auto"),
    "bf16": dict(quantization="none", dtype="bfloat16"),
    "fp32": dict(quantization="none", dtype="float32"),
}

# Published config.json values of the base models on the Hugging Face hub (Qwen/Qwen2.5-0.5B,
# Qwen/Qwen2.5-1.5B, meta-llama/Llama-3.2-1B). Built from these, the models have 494M, 1,544M and
# 1,236M parameters, as the model cards say (0.49B, 1.54B, 1.23B). Qwen2 has q/k/v biases built in.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
    "llama-3.2-1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                          original_max_position_embeddings=8192),
        rms_norm_eps=1e-5, tie_word_embeddings=True,
    ),
}  # fmt: skip
# --dry-run-cpu: the same code path on a tiny shape. Its vocabulary is larger than the tokenizer's, as
# the real shapes' are, so sampled ids the tokenizer does not know are exercised too.
TINY_SHAPE = dict(
    model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=50176, max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)  # fmt: skip
# Per-method workload on CUDA, and its tiny stand-in for --dry-run-cpu.
CUDA_WORK = {
    "sft": dict(length=1024, batch=4),
    "dpo": dict(length=1024, batch=2),  # 2 pairs = 4 sequences of 1024 tokens (+ the reference pass)
    "grpo": dict(batch=8, num_generations=8, max_completion_length=512),  # one prompt x 8 generations per step
}
DRY_WORK = {
    "sft": dict(length=64, batch=2),
    "dpo": dict(length=128, batch=2),
    "grpo": dict(batch=4, num_generations=4, max_completion_length=16),
}
# GRPO variants at --compare-shape, besides lowtune's defaults.
VARIANTS = {
    "plain": "plain TRL + PEFT + bnb",
    "no-gc": "lowtune, gradient checkpointing off",
    "kernel": "lowtune + logprob_kernel=lowtune",
}
WORKER_ENV = dict(
    HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
    HF_DATASETS_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore",
)  # fmt: skip


def say(message: str) -> None:
    from lowtune import ui

    ui.say(message)
    sys.stdout.flush()


# ---------------------------------------------------------------- data (written by the parent)


def _lines(n: int = 2000) -> list[str]:
    from lowtune.data import arithmetic

    return [f"{p.question} {p.solution}." for p in arithmetic.train(n, 2, ["+"], seed=0)]


def _long_text(tokenizer, lines: list[str], start: int, tokens: int) -> str:
    """Arithmetic lines from `start` on (cycling) until the text has at least `tokens` tokens."""
    parts, count, i = [], 0, start
    while count < tokens:
        parts.append(lines[i % len(lines)])
        count += len(tokenizer(parts[-1] + "\n", add_special_tokens=False).input_ids)
        i += 1
    text = "\n".join(parts)
    while len(tokenizer(text, add_special_tokens=False).input_ids) < tokens:  # merges across lines
        text += "\n" + lines[i % len(lines)]
        i += 1
    return text


def write_sft_rows(path: Path, tokenizer_dir: str, n: int, length: int) -> Path:
    """`n` text rows, each longer than `length` tokens: TRL truncates every one to exactly `length`."""
    from transformers import AutoTokenizer

    tokenizer, lines = AutoTokenizer.from_pretrained(tokenizer_dir), _lines()
    rows = [{"text": _long_text(tokenizer, lines, 37 * i, length + 16)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_pairs(path: Path, tokenizer_dir: str, n: int, length: int) -> Path:
    """`n` preference pairs: a prompt that fills about half of `length` once the chat template (and any
    default system prompt it adds) is applied, and replies longer than `length`, so TRL truncates every
    chosen and rejected sequence to exactly `length`."""
    from transformers import AutoTokenizer

    tokenizer, lines = AutoTokenizer.from_pretrained(tokenizer_dir), _lines()
    template = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    overhead = len(tokenizer(template, add_special_tokens=False).input_ids)
    prompt_tokens = length // 2 - overhead
    if prompt_tokens < 8:
        raise SystemExit(f"DPO length {length} is too short: the chat template alone takes {overhead} tokens")
    rows = []
    for i in range(n):
        rows.append({
            "prompt": _long_text(tokenizer, lines, 101 * i, prompt_tokens),
            "chosen": _long_text(tokenizer, lines, 101 * i + 500, length),
            "rejected": _long_text(tokenizer, lines, 101 * i + 1000, length),
        })  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- workers (each a fresh process)


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _memory(baseline_rss: float) -> dict[str, Any]:
    """Peak resident set of this process, and on CUDA the peak allocated/reserved since the last reset."""
    import torch

    from lowtune.runs import peak_memory_mb

    out = {"peak_rss_mb": round(peak_memory_mb(torch.device("cpu")), 1), "rss_after_imports_mb": round(baseline_rss, 1)}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


def _watch_train_start(store: dict) -> None:
    """Record the memory in use when trainer.train() starts (model, adapter, optimizer not yet built)."""
    import torch
    import transformers

    original = transformers.Trainer.train

    def train(self, *args, **kwargs):
        store["rss_at_train_start_mb"] = round(_rss_mb(), 1)
        if torch.cuda.is_available():
            store["cuda_allocated_at_train_start_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
        return original(self, *args, **kwargs)

    transformers.Trainer.train = train


LOG_KEYS = ("num_input_tokens_seen", "num_tokens", "completions/mean_length", "loss")


def _log_record(step: int, when: float, logs: dict) -> dict:
    return {"step": step, "time": when, **{k: logs[k] for k in LOG_KEYS if k in logs}}


def lowtune_overrides(spec: dict) -> list[str]:
    """The recipe overrides of a lowtune measurement (also what benchmarks/plan_accuracy.py plans)."""
    method, precision = spec["method"], PRECISIONS[spec["precision"]]
    overrides = [
        f"model.name={spec['model']}",
        f"model.quantization={precision['quantization']}",
        f"model.dtype={precision['dtype']}",
        f"lora.r={LORA['r']}",
        f"lora.alpha={LORA['alpha']}",
        f"lora.target_modules={LORA['target_modules']}",
        f"train.max_steps={spec['steps']}",
        f"train.per_device_train_batch_size={spec['batch']}",
        "train.logging_steps=1",
        "eval.task=null",
        f"output.dir={spec['workdir']}",
        "output.name=lowtune",
        "output.quiet=true",
    ]
    if spec["gc"] is not None:  # None: lowtune's default (auto: on with CUDA, off on CPU)
        overrides.append(f"model.gradient_checkpointing={str(spec['gc']).lower()}")
    if method == "sft":
        overrides += [f"data.source={spec['data']}", "data.format=text", f"train.max_length={spec['length']}",
                      "train.packing=false", *(f"train.{k}={v}" for k, v in SFT.items())]  # fmt: skip
    elif method == "dpo":
        overrides += [f"data.source={spec['data']}", "data.format=preference", "data.heldout=0",
                      f"train.max_length={spec['length']}"]  # fmt: skip
    else:
        overrides += [f"data.n_train={GRPO_PROMPTS}", f"train.num_generations={spec['num_generations']}",
                      f"train.max_completion_length={spec['max_completion_length']}"]  # fmt: skip
    if spec.get("logprob_kernel"):
        overrides.append(f"model.logprob_kernel={spec['logprob_kernel']}")
    return overrides + list(spec.get("extra_overrides", []))


def lowtune_worker(spec: dict) -> dict:
    """lowtune.recipes.train on the shipped recipe for the method, with the benchmark's overrides."""
    import torch

    from lowtune import recipes
    from lowtune.config import load_recipe

    baseline, at_start = _rss_mb(), {}
    _watch_train_start(at_start)
    if spec.get("memory_cap_mb") and torch.cuda.is_available():  # a smaller GPU (benchmarks/plan_gpu.py)
        total = torch.cuda.get_device_properties(0).total_memory / 2**20
        torch.cuda.set_per_process_memory_fraction(spec["memory_cap_mb"] / total)
    method, overrides = spec["method"], lowtune_overrides(spec)
    recipe = load_recipe(ROOT / "recipes" / f"{method}.yaml", overrides)
    run, summary = recipes.train(recipe)
    memory = _memory(baseline)  # lowtune resets the CUDA peak right before trainer.train()
    logs = []
    for line in run.metrics.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            logs.append(_log_record(record["step"], record["time"], record))
    keep = ("steps", "tokens", "tokens_per_s", "peak_memory_mb", "quantization", "logprob_kernel", "device")
    return {
        "logs": logs,
        **memory,
        **at_start,
        "summary": {k: summary[k] for k in keep if k in summary},
        "learning_rate": recipe.train.get("learning_rate"),
        "compute_dtype": summary["placement"]["dtype"],
    }


def plain_worker(spec: dict) -> dict:
    """A plain TRL + PEFT (+ bitsandbytes) script, as a user would write it from TRL's docs."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback

    baseline, at_start = _rss_mb(), {}
    _watch_train_start(at_start)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    path, method = spec["model"], spec["method"]
    dtype = {"nf4": torch.bfloat16 if cuda else torch.float32, "bf16": torch.bfloat16, "fp32": torch.float32}[
        spec["precision"]
    ]
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": device}}
    if spec["precision"] == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["target_modules"],
                      task_type="CAUSAL_LM")  # fmt: skip
    logs: list[dict] = []

    class Times(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                records.append(_log_record(state.global_step, time.time(), logs))

    records = logs  # the callback's `logs` argument shadows the list
    common = dict(
        output_dir=str(Path(spec["workdir"]) / "plain"), max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch"], logging_steps=1, report_to="none", save_strategy="no",
        bf16=dtype == torch.bfloat16, use_cpu=not cuda, seed=0,
    )  # fmt: skip
    checks: dict[str, Any] = {}
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
        args = SFTConfig(**common, **SFT, max_length=spec["length"], packing=False,
                         gradient_checkpointing=spec["gc"])  # fmt: skip
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=lora, callbacks=[Times()])  # fmt: skip
        lengths = {len(ids) for ids in trainer.train_dataset["input_ids"]}
        checks["row_lengths"] = sorted(lengths)
    elif method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        from lowtune.data import arithmetic

        rows = [{"prompt": [{"role": "user", "content": p.question}], "answer": str(p.answer)}
                for p in arithmetic.train(GRPO_PROMPTS, 2, ["+"], seed=0)]  # fmt: skip

        def correct(completions, answer, **kw):
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
            return [float(a in t) for t, a in zip(texts, answer, strict=True)]

        # TRL's own defaults otherwise: gradient checkpointing on, temperature 1, beta 0.
        args = GRPOConfig(**common, learning_rate=spec["learning_rate"], num_generations=spec["num_generations"],
                          max_completion_length=spec["max_completion_length"])  # fmt: skip
        checks["gradient_checkpointing"] = args.gradient_checkpointing
        trainer = GRPOTrainer(model=model, reward_funcs=correct, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, peft_config=lora, callbacks=[Times()])  # fmt: skip
    else:
        raise SystemExit(f"the plain script covers sft and grpo, not {method}")
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # as lowtune does: the peak of training, weights included
    trainer.train()
    return {"logs": logs, **_memory(baseline), **at_start, "checks": checks,
            "compute_dtype": str(dtype).removeprefix("torch.")}  # fmt: skip


def build_worker(spec: dict) -> dict:
    """A model of the shape with random weights (seeded, bf16) and the tokenizer, saved to spec['out']."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    if len(tokenizer) > spec["shape"]["vocab_size"]:
        raise SystemExit(f"the tokenizer has {len(tokenizer)} tokens, more than the shape's vocabulary")
    config = AutoConfig.for_model(**spec["shape"], **ids)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(spec["out"])
    tokenizer.save_pretrained(spec["out"])
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "seconds": round(time.perf_counter() - start, 1)}


WORKERS = {"lowtune": lowtune_worker, "plain": plain_worker, "build": build_worker}


def run_worker(spec: dict, timeout: float) -> dict:
    """Run one worker in a fresh process; its result, or {"error": ...} (a failure never stops the benchmark)."""
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "spec.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        **WORKER_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "_worker", str(workdir / "spec.json")], capture_output=True,
                              text=True, timeout=timeout, env=env)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": round(time.perf_counter() - start, 1)}
    wall = round(time.perf_counter() - start, 1)
    result_file = workdir / "result.json"
    if done.returncode != 0 or not result_file.is_file():
        tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-12:]
        return {"error": f"exit {done.returncode}: " + "\n".join(tail), "wall_s": wall}
    return {**json.loads(result_file.read_text()), "wall_s": wall}


def _worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = WORKERS[spec["side"]](spec)
    (Path(spec_path).parent / "result.json").write_text(json.dumps(result))


# ---------------------------------------------------------------- figures from logs


def speed(result: dict, spec: dict, skip: int) -> dict[str, Any]:
    """s/step and tokens/s of one measurement. SFT: batch x length per step (every row is exactly the
    length); DPO and GRPO: the trainer's own token counter between the measured logs."""
    logs = result.get("logs") or []
    sps = s_per_step(logs, skip)
    out: dict[str, Any] = {"s_per_step": round(sps, 4) if sps else None, "tokens_per_s": None}
    if not sps:
        return out
    measured = [r for r in logs if r["step"] >= skip]
    if spec["method"] == "sft":
        out["tokens_per_s"] = round(spec["batch"] * spec["length"] / sps, 1)
        if "num_input_tokens_seen" in measured[0]:  # lowtune counts non-padding tokens: a check
            steps = measured[-1]["step"] - measured[0]["step"]
            seen = measured[-1]["num_input_tokens_seen"] - measured[0]["num_input_tokens_seen"]
            out["tokens_per_step_seen"] = seen / steps
        return out
    for key in ("num_tokens", "num_input_tokens_seen"):
        if key in measured[0] and key in measured[-1]:
            seconds = measured[-1]["time"] - measured[0]["time"]
            out["tokens_per_s"] = round((measured[-1][key] - measured[0][key]) / seconds, 1)
            break
    lengths = [r["completions/mean_length"] for r in measured[1:] if "completions/mean_length" in r]
    if lengths:
        out["completion_length"] = round(statistics.mean(lengths), 1)
    return out


def peak_mb(row: dict) -> float | None:
    """CUDA: max allocated since training began; CPU: the worker's peak resident set."""
    return row.get("cuda_max_allocated_mb") or row.get("peak_rss_mb")


def start_mb(row: dict) -> float | None:
    """Memory in use when training began: the loaded model and adapter (CUDA allocated, or CPU resident)."""
    return row.get("cuda_allocated_at_train_start_mb") or row.get("rss_at_train_start_mb")


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "—" if value is None else format(value, spec)


# ---------------------------------------------------------------- cpu


def cpu(args) -> None:
    import torch

    from lowtune import models, ui

    if args.quick:
        args.lengths, args.precisions, args.checkpointing = [128], ["fp32", "nf4"], ["off"]
        args.steps, args.skip, args.rounds, args.batch = 4, 2, 1, 2
    if args.plain_precisions is None:  # lowtune's default precision on this machine
        args.plain_precisions = ["nf4"] if torch.cuda.is_available() else ["fp32"]
    if args.skip >= args.steps:
        raise SystemExit(f"--skip ({args.skip}) must be below --steps ({args.steps}) to leave steps to time")
    model = models.resolve_path(args.model, say)
    configs = [(p, gc == "on", length) for length in args.lengths for p in args.precisions for gc in args.checkpointing]
    settings = {"model": args.model, "batch": args.batch, "steps": args.steps, "measured_from_step": args.skip,
                "rounds": args.rounds, "lora": LORA, **SFT, "rows": "text rows truncated to exactly the length",
                "plain_precisions": args.plain_precisions,
                "memory": "CPU: the worker's peak resident set; CUDA: max allocated since training began"}  # fmt: skip
    rows: list[dict] = []
    stem = args.out / "throughput_cpu"
    report = {"benchmark": "throughput_cpu", "machine": machine_info(PACKAGES), "settings": settings,
              "measurements": rows}  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = {n: write_sft_rows(Path(tmp) / f"sft-{n}.jsonl", model, args.batch * (args.steps + 2), n)
                for n in args.lengths}  # fmt: skip
        for precision, gc, length in configs:
            sides = ["lowtune", "plain"] if precision in args.plain_precisions else ["lowtune"]
            rounds = args.rounds if len(sides) == 2 else 1
            for i in range(rounds):
                for side in sides if i % 2 == 0 else sides[::-1]:  # alternate who goes first
                    spec = dict(side=side, method="sft", model=model, precision=precision, gc=gc, length=length,
                                batch=args.batch, steps=args.steps, data=str(data[length]),
                                workdir=str(Path(tmp) / f"{len(rows)}"))  # fmt: skip
                    result = run_worker(spec, args.timeout)
                    row = {"side": side, "precision": precision, "gradient_checkpointing": gc, "length": length,
                           "round": i + 1, **speed(result, spec, args.skip),
                           **{k: v for k, v in result.items() if k != "logs"}, "logs": result.get("logs")}  # fmt: skip
                    rows.append(row)
                    say(f"{side:8s} {precision} gc={'on' if gc else 'off':3s} L={length}: "
                        + (f"error {row['error'].splitlines()[-1]}" if "error" in row else
                           f"{_fmt(row['s_per_step'], '.3f')} s/step, {_fmt(row['tokens_per_s'])} tok/s, "
                           f"peak {_fmt(peak_mb(row))} MB"))  # fmt: skip
                    report["wall_time_s"] = round(time.perf_counter() - start, 1)
                    _write_json(stem, report)
    summary, notes = cpu_summary(rows, args.plain_precisions)
    report["summary"] = summary
    columns = ["precision", "grad ckpt", "length", "side", "s/step", "each round", "tokens/s", "peak MB", "vs plain"]
    table = [
        [s["precision"] + (f" ({s['compute_dtype']})" if s["precision"] == "nf4" and s.get("compute_dtype") else ""),
         "on" if s["gradient_checkpointing"] else "off", str(s["length"]),
         "lowtune" if s["side"] == "lowtune" else "plain TRL + PEFT", _fmt(s["s_per_step"], ".3f"),
         " ".join(_fmt(x, ".3f") for x in s["each"]) or s.get("error", "")[:80], _fmt(s["tokens_per_s"]),
         _fmt(s["peak_mb"]), "" if s.get("overhead") is None else f"{s['overhead']:+.1%}"]
        for s in summary
    ]  # fmt: skip
    _write_report(stem, report, columns, table, notes)
    _cpu_figure(stem, summary, report)
    shown = [0, 1, 2, 3, 4, 6, 7, 8]  # the console is narrow: per-round times are in the .md
    ui.table(f"SFT throughput on {describe(report['machine'])}", [columns[i] for i in shown],
             [[r[i] for i in shown] for r in table])  # fmt: skip
    for note in notes:
        say(note)


def cpu_summary(rows: list[dict], plain_precisions: list[str]) -> tuple[list[dict], list[str]]:
    """One entry per (precision, checkpointing, length, side): medians over rounds, lowtune's overhead."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["precision"], r["gradient_checkpointing"], r["length"], r["side"]), []).append(r)
    median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    summary = []
    for (precision, gc, length, side), group in groups.items():
        ok = [r for r in group if r.get("s_per_step")]
        summary.append({
            "precision": precision, "gradient_checkpointing": gc, "length": length, "side": side,
            "compute_dtype": group[0].get("compute_dtype"), "each": [r["s_per_step"] for r in ok],
            "s_per_step": median([r["s_per_step"] for r in ok]),
            "tokens_per_s": median([r["tokens_per_s"] for r in ok]),
            "peak_mb": max((peak_mb(r) for r in ok if peak_mb(r)), default=None),
            **({"error": group[0]["error"].splitlines()[-1]} if not ok and "error" in group[0] else {}),
        })  # fmt: skip
    by = {(s["precision"], s["gradient_checkpointing"], s["length"], s["side"]): s for s in summary}
    overheads = {}
    for s in summary:
        plain = by.get((s["precision"], s["gradient_checkpointing"], s["length"], "plain"))
        if s["side"] == "lowtune" and plain and s["s_per_step"] and plain["s_per_step"]:
            s["overhead"] = round(s["s_per_step"] / plain["s_per_step"] - 1, 4)
            s["peak_ratio"] = round(s["peak_mb"] / plain["peak_mb"], 3) if s["peak_mb"] and plain["peak_mb"] else None
            overheads[f"{s['precision']} gc={'on' if s['gradient_checkpointing'] else 'off'} L={s['length']}"] = s[
                "overhead"
            ]
    notes = [
        "tokens/s = batch x length / (s/step) (every row is exactly the length); peak MB: the worker's peak "
        "resident set on CPU (imports included), torch.cuda.max_memory_allocated from the start of training on CUDA."
    ]
    if overheads:
        worst = max(overheads.values())
        notes.append(
            f"lowtune's overhead over plain TRL + PEFT, median s/step ({', '.join(plain_precisions)}): "
            + ", ".join(f"{k} {v:+.1%}" for k, v in overheads.items())
            + f". Target at most +5%: {'met' if worst <= 0.05 else 'NOT met'} (worst {worst:+.1%})."
        )
    return summary, notes


def _cpu_figure(stem: Path, summary: list[dict], report: dict) -> None:
    plt = _pyplot()
    labels = [f"{s['precision']} ckpt {'on' if s['gradient_checkpointing'] else 'off'}\nL={s['length']}"
              + (" plain" if s["side"] == "plain" else "") for s in summary]  # fmt: skip
    colors = ["#888" if s["side"] == "plain" else "#2a7" for s in summary]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(summary)), 4.5))
    memory = "peak GPU memory allocated, MB" if report["machine"].get("gpu") else "peak resident memory, MB"
    for ax, key, ylabel in ((axes[0], "tokens_per_s", "tokens / s"), (axes[1], "peak_mb", memory)):
        ax.bar(range(len(summary)), [s[key] or 0 for s in summary], color=colors)
        ax.set_xticks(range(len(summary)), labels, fontsize=6, rotation=90)
        ax.set_ylabel(ylabel)
    fig.suptitle(f"SFT, {report['settings']['model']}, batch {report['settings']['batch']} (grey: plain TRL + PEFT)"
                 f" — {describe(report['machine'])}", fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- cuda


def cuda(args) -> None:
    import torch

    if not torch.cuda.is_available() and not args.dry_run_cpu:
        raise SystemExit(
            "throughput.py cuda: no CUDA device is visible. Run `throughput.py cpu` here, or `cuda --dry-run-cpu` to "
            "test this code path on a tiny shape on the CPU."
        )
    tokenizer = Path(args.tokenizer).expanduser()
    if not (tokenizer / "tokenizer_config.json").is_file():
        raise SystemExit(f"--tokenizer {tokenizer}: no tokenizer_config.json there (pass a model directory)")
    dry = args.dry_run_cpu
    shapes = {"tiny-qwen2": TINY_SHAPE} if dry else {s: SHAPES[s] for s in args.shapes}
    compare = "tiny-qwen2" if dry else args.compare_shape
    work = DRY_WORK if dry else CUDA_WORK
    plan = _cuda_plan(list(shapes), args.methods, compare, args.variants)
    deadline = time.monotonic() + args.budget
    settings = {"work": work, "steps": args.steps, "grpo_steps": args.grpo_steps, "measured_from_step": args.skip,
                "lora": LORA, "precision": "nf4 base (bitsandbytes, double quantization), bf16 compute, LoRA",
                "compare_shape": compare, "dry_run_cpu": dry, "budget_s": args.budget,
                "tokenizer": str(tokenizer), "shapes": shapes}  # fmt: skip
    report: dict[str, Any] = {"benchmark": "throughput_cuda", "machine": machine_info(PACKAGES), "settings": settings,
                              "models": {}, "measurements": []}  # fmt: skip
    stem = args.out / "throughput_cuda"
    start = time.perf_counter()
    say(
        f"{len(plan)} measurements planned within {args.budget:.0f} s: " + ", ".join(f"{s}/{m}/{v}" for s, m, v in plan)
    )
    with tempfile.TemporaryDirectory() as tmp:
        data: dict[str, Path] = {}
        for i, (shape, method, variant) in enumerate(plan):
            left = deadline - time.monotonic()
            row: dict[str, Any] = {"shape": shape, "method": method, "variant": variant}
            model_dir = Path(tmp) / shape
            if shape not in report["models"] and left > 30:
                built = run_worker(dict(side="build", shape=shapes[shape], tokenizer=str(tokenizer),
                                        out=str(model_dir), workdir=str(Path(tmp) / f"build-{shape}")),
                                   min(args.timeout, left))  # fmt: skip
                report["models"][shape] = built
                if "error" in built:
                    say(f"{shape}: build failed: {built['error']}")
                else:
                    say(f"{shape}: {built['parameters'] / 1e6:,.0f}M parameters, built in {built['wall_s']} s")
                left = deadline - time.monotonic()
            if left < 30:
                row["error"] = "skipped: time budget spent (--budget)"
            elif "error" in report["models"].get(shape, {}):
                row["error"] = "skipped: the model could not be built"
            else:
                if method in ("sft", "dpo") and method not in data:
                    n = work[method]["batch"] * (args.steps + 2)
                    write = write_sft_rows if method == "sft" else write_pairs
                    data[method] = write(Path(tmp) / f"{method}.jsonl", str(tokenizer), n, work[method]["length"])
                spec = dict(side="plain" if variant == "plain" else "lowtune", method=method, model=str(model_dir),
                            precision="nf4", gc=False if variant == "no-gc" else None,
                            workdir=str(Path(tmp) / f"run-{i}"),
                            steps=args.grpo_steps if method == "grpo" else args.steps,
                            data=str(data.get(method, "")), **work[method])  # fmt: skip
                if variant == "kernel":
                    spec["logprob_kernel"] = "lowtune"
                if variant == "plain":
                    spec["learning_rate"] = _recipe_lr(method)
                result = run_worker(spec, min(args.timeout, left))
                if "timed out" in result.get("error", "") and left < args.timeout:
                    result["error"] = f"stopped at the --budget deadline after {left:.0f} s (not a fault)"
                row.update(speed(result, spec, args.skip))
                row.update({k: v for k, v in result.items() if k != "logs"}, logs=result.get("logs"))
            report["measurements"].append(row)
            say(f"{shape} {method} {variant}: " + (
                f"{row['error'].splitlines()[-1]}" if "error" in row else
                f"peak {_fmt(_gib(peak_mb(row)), '.2f')} GiB, {_fmt(row['s_per_step'], '.2f')} s/step, "
                f"{_fmt(row['tokens_per_s'])} tok/s"))  # fmt: skip
            report["wall_time_s"] = round(time.perf_counter() - start, 1)
            _write_json(stem, report)
    _cuda_finish(stem, report, compare)


def _cuda_finish(stem: Path, report: dict, compare: str) -> None:
    """Table, notes, figure and console table of a cuda report (JSON, Markdown, PNG under stem)."""
    from lowtune import ui

    table, notes, comparison = cuda_table(report["measurements"], compare)
    report["grpo_comparison"] = comparison
    columns = ["shape", "method", "variant", "peak GiB", "peak reserved GiB", "at start GiB", "s/step", "tokens/s",
               "peak vs plain"]  # fmt: skip
    _write_report(stem, report, columns, table, notes)
    _cuda_figure(stem, report, compare)
    ui.table(f"NF4 + LoRA memory and speed on {describe(report['machine'])}", columns, table)
    for note in notes:
        say(note)


def merge(args) -> None:
    """One cuda report from several calls' JSON files (a short GPU lease may run the plan in parts): the
    measurements in order, a measured row replacing an earlier skipped or failed one for the same
    shape, method and variant. The calls must have run on the same GPU with the same versions."""
    reports = [json.loads(Path(f).read_text()) for f in args.reports]
    if any(r.get("benchmark") != "throughput_cuda" for r in reports):
        raise SystemExit("throughput.py merge: every file must be a throughput_cuda.json written by `cuda`")
    machines = {describe(r["machine"]) + str([r["machine"].get(k) for k in PACKAGES]) for r in reports}
    if len(machines) > 1:
        raise SystemExit(f"throughput.py merge: the files come from different machines or versions: {sorted(machines)}")
    rows: dict[tuple, dict] = {}
    for r in reports:
        for row in r["measurements"]:
            key = (row["shape"], row["method"], row["variant"])
            if key not in rows or "error" in rows[key] or "error" not in row:
                rows[key] = row
    first = reports[0]
    merged = {"benchmark": "throughput_cuda", "machine": first["machine"],
              "settings": {**first["settings"], "merged_from": [r["settings"] for r in reports]},
              "models": {k: v for r in reports for k, v in r["models"].items()}, "measurements": list(rows.values()),
              "wall_time_s": round(sum(r.get("wall_time_s", 0) for r in reports), 1)}  # fmt: skip
    _cuda_finish(args.out / "throughput_cuda", merged, first["settings"]["compare_shape"])


def _cuda_plan(shapes: list[str], methods: list[str], compare: str, variants: list[str]) -> list[tuple[str, str, str]]:
    """(shape, method, variant) in priority order: the GRPO comparison (lowtune, plain) first, then every
    shape x method, the other GRPO variants last."""
    grpo_here = "grpo" in methods and compare in shapes
    plan = [(compare, "grpo", v) for v in ("lowtune", "plain") if v == "lowtune" or v in variants] if grpo_here else []
    order = [compare] + [s for s in shapes if s != compare] if compare in shapes else shapes
    for shape in order:
        plan += [
            (shape, m, "lowtune") for m in ("sft", "dpo", "grpo") if m in methods and (shape, m, "lowtune") not in plan
        ]
    if grpo_here:
        plan += [(compare, "grpo", v) for v in ("no-gc", "kernel") if v in variants]
    return plan


def _recipe_lr(method: str) -> float:
    from lowtune.config import load_recipe

    return float(load_recipe(ROOT / "recipes" / f"{method}.yaml").train["learning_rate"])


def _gib(mb: float | None) -> float | None:
    return None if mb is None else mb / 1024


def cuda_table(rows: list[dict], compare: str) -> tuple[list[list[str]], list[str], dict]:
    by = {(r["shape"], r["method"], r["variant"]): r for r in rows}
    plain = by.get((compare, "grpo", "plain"), {})
    comparison: dict[str, Any] = {}
    table = []
    for r in rows:
        vs = ""
        if (
            r["method"] == "grpo"
            and r["shape"] == compare
            and r["variant"] != "plain"
            and peak_mb(plain)
            and peak_mb(r)
        ):
            ratio = peak_mb(r) / peak_mb(plain)
            comparison[r["variant"]] = {
                "peak_mb": peak_mb(r),
                "plain_peak_mb": peak_mb(plain),
                "ratio": round(ratio, 3),
            }
            vs = f"{ratio:.2f}x"
        name = "lowtune" if r["variant"] == "lowtune" else VARIANTS[r["variant"]]
        if "error" in r:
            table.append([r["shape"], r["method"], name, "error", "", "", "", "", r["error"].splitlines()[-1][:80]])
            continue
        table.append([r["shape"], r["method"], name, _fmt(_gib(peak_mb(r)), ".2f"),
                      _fmt(_gib(r.get("cuda_max_reserved_mb")), ".2f"), _fmt(_gib(start_mb(r)), ".2f"),
                      _fmt(r.get("s_per_step"), ".2f"), _fmt(r.get("tokens_per_s")), vs])  # fmt: skip
    notes = [
        "peak: torch.cuda.max_memory_allocated from the start of training (weights included), on CPU (dry run) the "
        "worker's peak RSS; at start: memory in use when trainer.train() began (quantized model + adapter). "
        "tokens/s: SFT batch x length; DPO and GRPO the trainer's token counter (GRPO: prompt + completion)."
    ]
    work = "8 generations x 512 tokens" if compare != "tiny-qwen2" else "dry run, tiny shape"
    if "lowtune" in comparison:
        ratios = {k: v["ratio"] for k, v in comparison.items()}
        best = min(ratios.values())
        notes.append(
            f"GRPO at the {compare} shape ({work}), peak memory lowtune / plain TRL + PEFT + bitsandbytes: "
            + "; ".join(f"{'lowtune' if k == 'lowtune' else VARIANTS[k]} {v:.2f}" for k, v in ratios.items())
            + f". Target at most 0.50: {'met' if ratios['lowtune'] <= 0.5 else 'NOT met'} with lowtune's defaults"
            + (f", {'met' if best <= 0.5 else 'NOT met'} by the best variant ({best:.2f})" if len(ratios) > 1 else "")
        )
        floor = (start_mb(plain) or 0) / peak_mb(plain)
        if best > 0.5 and floor > 0.5:
            notes.append(
                f"The plain run held {_gib(start_mb(plain)):.2f} GiB when training began (the NF4 model and adapter), "
                f"{floor:.0%} of its peak: half its peak is less than the quantized model itself, so no run that "
                "keeps the same NF4 weights on the GPU can reach the 0.50 target."
            )
    elif (compare, "grpo", "lowtune") in by:
        notes.append(f"GRPO comparison at {compare}: incomplete (a side failed or was skipped); no ratio")
    comparison["plain_gradient_checkpointing"] = (plain.get("checks") or {}).get("gradient_checkpointing")
    if comparison["plain_gradient_checkpointing"] is not None:
        notes.append(
            f"The plain TRL script ran with gradient_checkpointing={comparison['plain_gradient_checkpointing']} "
            "(TRL's GRPOConfig default); lowtune's model.gradient_checkpointing is auto (on with CUDA)."
        )
    return table, notes, comparison


def _cuda_figure(stem: Path, report: dict, compare: str) -> None:
    plt = _pyplot()
    rows = [r for r in report["measurements"] if "error" not in r and peak_mb(r)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    for j, method in enumerate(("sft", "dpo", "grpo")):
        values = {r["shape"]: _gib(peak_mb(r)) for r in rows if r["method"] == method and r["variant"] == "lowtune"}
        xs = [i + (j - 1) * 0.27 for i, s in enumerate(shapes) if s in values]
        ax1.bar(xs, [values[s] for s in shapes if s in values], width=0.27, label=method)
    ax1.set_xticks(range(len(shapes)), shapes, fontsize=8)
    ax1.set_ylabel("peak GPU memory allocated, GiB" if report["machine"].get("gpu") else "peak RSS, GiB (CPU)")
    ax1.set_title("lowtune, NF4 + LoRA", fontsize=9)
    ax1.legend(fontsize=8)
    grpo = [r for r in rows if r["shape"] == compare and r["method"] == "grpo"]
    names = ["lowtune" if r["variant"] == "lowtune" else VARIANTS[r["variant"]] for r in grpo]
    ax2.bar(range(len(grpo)), [_gib(peak_mb(r)) for r in grpo],
            color=["#888" if r["variant"] == "plain" else "#2a7" for r in grpo])  # fmt: skip
    ax2.bar(range(len(grpo)), [_gib(start_mb(r) or 0) for r in grpo], width=0.5, color="#335", alpha=0.5,
            label="at start of training (model + adapter)")  # fmt: skip
    plain = next((r for r in grpo if r["variant"] == "plain"), None)
    if plain:
        ax2.axhline(_gib(peak_mb(plain)) / 2, color="#c33", linestyle="--", linewidth=1, label="target: half of plain")
    ax2.legend(fontsize=8)
    ax2.set_xticks(
        range(len(grpo)), [n.replace(" + ", "\n+ ", 1) if n.startswith("lowtune") else n for n in names], fontsize=7
    )
    ax2.set_title(f"GRPO at the {compare} shape", fontsize=9)
    fig.suptitle(f"throughput_cuda — {describe(report['machine'])}", fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- report files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_json(stem: Path, report: dict) -> None:
    from lowtune.files import replace_atomic

    stem.parent.mkdir(parents=True, exist_ok=True)
    replace_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2) + "\n")


def _write_report(stem: Path, report: dict, columns: list[str], rows: list[list[str]], notes: list[str]) -> None:
    """stem.json (everything, per-step logs included) and stem.md (the machine, the table, the notes)."""
    report["notes"] = notes
    _write_json(stem, report)
    lines = [f"Machine: {describe(report['machine'])}", "", *markdown_table(columns, rows)]
    lines += ["", *notes] if notes else []
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_worker":
        _worker_main(sys.argv[2])
        return
    from lowtune import builtin

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cpu", help="SFT grid: lowtune vs plain TRL + PEFT, precision, checkpointing, length")
    c.add_argument("--model", default="smollm2-135m-instruct", help="builtin name or local model directory")
    c.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    c.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=["nf4", "bf16", "fp32"])
    c.add_argument("--checkpointing", nargs="+", choices=["off", "on"], default=["off", "on"])
    c.add_argument("--plain-precisions", nargs="*", choices=list(PRECISIONS), default=None,
                   help="also run the plain TRL + PEFT script at these (default: lowtune's default here: fp32 on "
                        "CPU, nf4 on CUDA)")  # fmt: skip
    c.add_argument("--batch", type=int, default=1)
    c.add_argument("--steps", type=int, default=5)
    c.add_argument("--skip", type=int, default=2, help="measure from this step on")
    c.add_argument("--rounds", type=int, default=2, help="alternating lowtune/plain rounds where both run")
    c.add_argument("--timeout", type=float, default=300, help="seconds per worker")
    c.add_argument("--quick", action="store_true", help="smoke run: L=128, fp32 and nf4, no checkpointing, 1 round")
    g = sub.add_parser("cuda", help="real shapes (random weights) on a GPU: SFT, DPO, GRPO memory and speed")
    g.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    g.add_argument("--methods", nargs="+", choices=["sft", "dpo", "grpo"], default=["sft", "dpo", "grpo"])
    g.add_argument("--compare-shape", choices=list(SHAPES), default="qwen2.5-1.5b", help="shape of the GRPO comparison")
    g.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS),
                   help="GRPO variants at the comparison shape besides lowtune's defaults")  # fmt: skip
    g.add_argument("--steps", type=int, default=3, help="steps of SFT and DPO")
    g.add_argument("--grpo-steps", type=int, default=2)
    g.add_argument("--skip", type=int, default=1, help="measure from this step on")
    g.add_argument("--budget", type=float, default=440, help="seconds for all measurements; later ones are skipped")
    g.add_argument("--timeout", type=float, default=180, help="seconds per worker")
    g.add_argument("--tokenizer", default=str(builtin.model_path("smollm2-135m-instruct")),
                   help="directory with the tokenizer to save beside each random model")  # fmt: skip
    g.add_argument("--dry-run-cpu", action="store_true", help="the same path on the CPU with a tiny shape")
    m = sub.add_parser("merge", help="one cuda report from several calls' throughput_cuda.json files")
    m.add_argument("reports", nargs="+", type=Path)
    for p in (c, g, m):
        p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    {"cpu": cpu, "cuda": cuda, "merge": merge}[args.what](args)


if __name__ == "__main__":
    main()
