"""Training speed and peak memory: lowtune against plain TRL + PEFT, across precisions and shapes.

    python benchmarks/throughput.py cpu                  # SFT grid, builtin SmolLM2-135M (about 15 min on 2 cores)
    python benchmarks/throughput.py cpu --quick          # smoke run (under a minute)
    python benchmarks/throughput.py cuda --out DIR       # real shapes, random weights, one GPU (at most ~9 min)
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

cuda: lowtune against plain TRL + PEFT + bitsandbytes on one GPU, for every method, and the speed levers
TRL and transformers already offer. Shapes: Qwen2.5-0.5B, Qwen2.5-1.5B, Llama-3.2-1B (and Llama-3.2-3B with
--shapes), each a model with random weights built from the published config (nothing is downloaded; the
tokenizer comes from --tokenizer), saved once in bf16; each worker loads it in NF4 (QLoRA) as lowtune does
on CUDA. Peak GPU memory (max allocated and max reserved from the start of training) and speed of lowtune's
SFT (4 x 1,024), DPO (2 pairs x 1,024), GRPO (8 generations x 512 tokens; random weights rarely emit EOS, so
completions run the full 512: the worst case) and PPO (rollouts of 16 x 256; lowtune's own trainer, no plain
side: TRL's PPO is experimental). The plain side is a TRL + PEFT + bitsandbytes script as TRL's docs show
it, with TRL's defaults (gradient checkpointing on) and the recipe's data, length, batch, steps and
learning rate. The levers (LEVERS: Liger kernels, padding-free batches, activation offloading,
continuous-batching generation, a static KV cache, gradient checkpointing off, lowtune's log-prob kernel)
run as lowtune with extra recipe overrides at --compare-shape, and every row with a plain row beside it
gets its lowtune / plain ratios of s/step, tokens/s and peak memory, checked against the issue's targets
(TARGETS). A lever this machine cannot run (Liger without its package) is recorded as skipped, with the
reason; so are, on --dry-run-cpu, the levers the CPU cannot run (DRY_SKIPS), and PPO trains on an fp32 base
there (bitsandbytes' CPU path cannot train a 4-bit base after it generated in eval mode).

Plan, in priority order for a short GPU lease (one ~10-minute call; `merge` joins calls that ran parts
of it): GRPO lowtune + plain at --compare-shape; SFT lowtune + plain at Llama-3.2-1B and --compare-shape;
DPO lowtune + plain at --compare-shape; the levers at --compare-shape (GRPO's, SFT's, DPO's); then the
other lowtune rows (PPO, the other shapes). Measurements run in that order within --budget seconds (a row
that would not fit in what is left is skipped, and cheaper rows after it still run); the JSON is
rewritten after each one.

Writes throughput_{cpu,cuda}.{json,md,png} under --out (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import importlib.util
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
# Qwen/Qwen2.5-1.5B, meta-llama/Llama-3.2-1B, meta-llama/Llama-3.2-3B). Built from these, the models have 494M,
# 1,544M, 1,236M and 3,213M parameters, as the model cards say (0.49B, 1.54B, 1.23B, 3.21B). Qwen2 has q/k/v biases
# built in. Llama-3.2-3B runs only when --shapes names it (DEFAULT_SHAPES).
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
    "llama-3.2-3b": dict(
        model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                          original_max_position_embeddings=8192),
        rms_norm_eps=1e-5, tie_word_embeddings=True,
    ),
}  # fmt: skip
# The default plan already fills one ~10-minute call; a 3B shape would only add rows that never run.
DEFAULT_SHAPES = ["qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-1b"]
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
    "ppo": dict(batch=8, num_mini_batches=2, max_new_tokens=256),  # rollouts of 8 x 2 = 16 responses x 256 tokens
}
DRY_WORK = {
    "sft": dict(length=64, batch=2),
    "dpo": dict(length=128, batch=2),
    "grpo": dict(batch=4, num_generations=4, max_completion_length=16),
    "ppo": dict(batch=2, num_mini_batches=2, max_new_tokens=16),
}
METHODS = ("sft", "dpo", "grpo", "ppo")
PLAIN_METHODS = ("sft", "dpo", "grpo")  # lowtune's PPO is its own trainer; TRL's is experimental: no plain side
PPO_EPOCHS = 2  # passes over each rollout: a rollout is PPO_EPOCHS x num_mini_batches optimizer steps
# Seconds a row needs on the GPU at the 1.5B shape, loading included (benchmarks/results/throughput_cuda.json, H200:
# SFT and DPO 27-35 s, GRPO 138-153 s; PPO not measured yet: 16 x 256 tokens per rollout, 2 rollouts). A row is
# started only with this much of --budget left, so a short lease spends what is left on the cheaper rows.
ROW_S = {"sft": 35, "dpo": 35, "grpo": 150, "ppo": 120}
DRY_ROW_S = 30
# Speed levers TRL 1.16 and transformers 5.24 already offer, measured as lowtune with extra recipe overrides at
# --compare-shape: variant -> (methods, overrides, description). Every train.* field is a field of the method's
# TRL config class (tests/test_throughput.py checks that each reaches it). In the plan order: GRPO's first, the
# generation levers ahead, as generation is most of a GRPO step. Not levers here: DPOConfig.padding_free (TRL 1.16
# warns and falls back to padding), Liger's fused linear losses (TRL 1.16's SFT, DPO and GRPO trainers refuse
# liger_kernel_config fused_linear_cross_entropy: they fuse the LM head themselves), vLLM (not installed).
LEVERS: dict[str, tuple[tuple[str, ...], list[str], str]] = {
    "continuous-batching": (("grpo",), ["train.use_transformers_continuous_batching=true"],
                            "lowtune + continuous-batching generation"),
    "static-cache": (("grpo",), ["train.cache_implementation=static"], "lowtune + static KV cache"),
    "liger": (("grpo", "sft", "dpo"), ["train.use_liger_kernel=true"], "lowtune + Liger kernels"),
    "no-gc": (("grpo", "sft", "dpo"), ["model.gradient_checkpointing=false"], "lowtune, gradient checkpointing off"),
    "kernel": (("grpo",), ["model.logprob_kernel=lowtune"], "lowtune + logprob_kernel=lowtune"),
    # SFT refuses padding_free without packing when max_length is set; "bfd" truncates each row (all longer than
    # the length) to one full bin, so a step holds the same batch x length tokens, flattened, without padding.
    "padding-free": (("sft",), ["train.padding_free=true", "train.packing=true", "train.packing_strategy=bfd"],
                     "lowtune + padding-free batches"),
    "offload": (("sft", "dpo"), ["train.activation_offloading=true"], "lowtune + activation offloading"),
}  # fmt: skip
VARIANTS = {"lowtune": "lowtune", "plain": "plain TRL + PEFT + bnb", **{k: v[2] for k, v in LEVERS.items()}}
# What a lever imports that a machine may lack: (module, how to install it).
LEVER_NEEDS = {"liger": ("liger_kernel", "pip install liger-kernel")}
# --dry-run-cpu: the levers the CPU cannot run, and why (none of this applies on CUDA). bitsandbytes' CPU path
# repacks 4-bit weights into an inference layout once the model runs in eval mode without gradients, and then
# cannot train through them; continuous batching generates so (PPO's rollouts too: the dry run trains PPO on an
# fp32 base, DRY_PRECISION).
DRY_SKIPS = {
    "liger": "Liger's kernels are Triton GPU kernels (no CPU path)",
    "offload": "TRL's activation offloading moves activations off an accelerator; the CPU dry run has none",
    "continuous-batching": "its eval-mode generation makes bitsandbytes repack 4-bit weights for CPU inference, "
    "which then cannot train",
}
DRY_PRECISION = {"ppo": "fp32"}
# The issue's targets, lowtune / plain TRL + PEFT + bitsandbytes at the same shape and work (issue 22: GRPO at
# Qwen2.5-1.5B, 8 x 512; SFT at Llama-3.2-1B and Qwen2.5-1.5B, 4 x 1,024; DPO): metric -> (<= or >=, bound).
TARGETS = {
    "grpo": {"s_per_step": ("<=", 0.33), "peak": ("<=", 1.1)},
    "sft": {"tokens_per_s": (">=", 1.5), "peak": ("<=", 0.8)},
    "dpo": {"tokens_per_s": (">=", 1.3), "peak": ("<=", 0.9)},
}
RATIO_NAMES = {"s_per_step": "s/step", "tokens_per_s": "tokens/s", "peak": "peak"}
# The training arguments each worker records as its trainer got them (a lever that did not reach TRL is no lever).
WATCHED_ARGS = ("gradient_checkpointing", "use_liger_kernel", "padding_free", "packing", "packing_strategy",
                "activation_offloading", "use_transformers_continuous_batching", "cache_implementation")  # fmt: skip
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
    """Record the memory in use when trainer.train() starts (model, adapter, optimizer not yet built), and the
    WATCHED_ARGS of the trainer's arguments."""
    import torch
    import transformers

    original = transformers.Trainer.train

    def train(self, *args, **kwargs):
        store["trl_args"] = {k: getattr(self.args, k) for k in WATCHED_ARGS if hasattr(self.args, k)}
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
    elif method == "grpo":
        # a random-init model scores 0 on every completion, so every group lacks signal: skipping those would train
        # one row a step, which no model that learns sees (the skip is measured in benchmarks/grpo_skip.py)
        overrides += [f"data.n_train={GRPO_PROMPTS}", f"train.num_generations={spec['num_generations']}",
                      f"train.max_completion_length={spec['max_completion_length']}",
                      "train.skip_zero_advantage=false"]  # fmt: skip
    else:  # ppo
        overrides += [f"data.n_train={GRPO_PROMPTS}", f"train.num_mini_batches={spec['num_mini_batches']}",
                      f"train.num_ppo_epochs={PPO_EPOCHS}",
                      f"train.max_new_tokens={spec['max_new_tokens']}"]  # fmt: skip
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
    if spec["gc"] is not None:  # None: TRL's default (on)
        common["gradient_checkpointing"] = spec["gc"]
    checks: dict[str, Any] = {}
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
        args = SFTConfig(**common, **SFT, max_length=spec["length"], packing=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=lora, callbacks=[Times()])  # fmt: skip
        lengths = {len(ids) for ids in trainer.train_dataset["input_ids"]}
        checks["row_lengths"] = sorted(lengths)
    elif method == "dpo":
        from trl import DPOConfig, DPOTrainer

        # The pairs file as a conversational preference dataset (TRL's docs' format; lowtune reads it so too).
        pairs = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                  "chosen": [{"role": "assistant", "content": r["chosen"]}],
                  "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                 for r in map(json.loads, Path(spec["data"]).read_text().splitlines())]  # fmt: skip
        # TRL's defaults otherwise: sigmoid loss, beta 0.1 (lowtune's recipe adds the chosen NLL, computed from the
        # same forward pass).
        args = DPOConfig(**common, learning_rate=spec["learning_rate"], max_length=spec["length"])
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                             peft_config=lora, callbacks=[Times()])  # fmt: skip
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
        trainer = GRPOTrainer(model=model, reward_funcs=correct, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, peft_config=lora, callbacks=[Times()])  # fmt: skip
    else:
        raise SystemExit(f"the plain script covers {', '.join(PLAIN_METHODS)}, not {method}")
    checks["gradient_checkpointing"] = args.gradient_checkpointing
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
                "ppo_epochs": PPO_EPOCHS, "lora": LORA,
                "precision": "nf4 base (bitsandbytes, double quantization), bf16 compute, LoRA",
                "compare_shape": compare, "dry_run_cpu": dry, "budget_s": args.budget, "tokenizer": str(tokenizer),
                "shapes": shapes, "levers": {v: LEVERS[v][1] for v in args.variants if v in LEVERS},
                "targets": TARGETS}  # fmt: skip
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
            row: dict[str, Any] = {"shape": shape, "method": method, "variant": variant}
            if variant in LEVERS:
                row["overrides"] = LEVERS[variant][1]
            need = DRY_ROW_S if dry else ROW_S[method]
            cannot = lever_skip(variant, dry)
            left = deadline - time.monotonic()
            model_dir = Path(tmp) / shape
            if not cannot and shape not in report["models"] and left > need:
                built = run_worker(dict(side="build", shape=shapes[shape], tokenizer=str(tokenizer),
                                        out=str(model_dir), workdir=str(Path(tmp) / f"build-{shape}")),
                                   min(args.timeout, left))  # fmt: skip
                report["models"][shape] = built
                if "error" in built:
                    say(f"{shape}: build failed: {built['error']}")
                else:
                    say(f"{shape}: {built['parameters'] / 1e6:,.0f}M parameters, built in {built['wall_s']} s")
                left = deadline - time.monotonic()
            if cannot:
                row["error"] = f"skipped: {cannot}"
            elif left < need:
                row["error"] = f"skipped: time budget spent (--budget: {left:.0f} s left, {method} needs ~{need} s)"
            elif "error" in report["models"].get(shape, {}):
                row["error"] = "skipped: the model could not be built"
            else:
                if method in ("sft", "dpo") and method not in data:
                    n = work[method]["batch"] * (args.steps + 2)
                    write = write_sft_rows if method == "sft" else write_pairs
                    data[method] = write(Path(tmp) / f"{method}.jsonl", str(tokenizer), n, work[method]["length"])
                steps, skip = _steps(method, work[method], args)
                precision = DRY_PRECISION.get(method, "nf4") if dry else "nf4"
                if precision != "nf4":
                    row["precision"] = precision
                spec = dict(side="plain" if variant == "plain" else "lowtune", method=method, model=str(model_dir),
                            precision=precision, gc=None, workdir=str(Path(tmp) / f"run-{i}"), steps=steps,
                            data=str(data.get(method, "")), **work[method])  # fmt: skip
                if variant in LEVERS:
                    spec["extra_overrides"] = LEVERS[variant][1]
                if variant == "plain":
                    spec["learning_rate"] = _recipe_lr(method)
                result = run_worker(spec, min(args.timeout, left))
                if "timed out" in result.get("error", "") and left < args.timeout:
                    result["error"] = f"stopped at the --budget deadline after {left:.0f} s (not a fault)"
                row.update(speed(result, spec, skip))
                row.update({k: v for k, v in result.items() if k != "logs"}, logs=result.get("logs"))
                if "error" not in row and variant in LEVERS and (missed := lever_missed(variant, row)):
                    row["error"] = missed
            report["measurements"].append(row)
            say(f"{shape} {method} {variant}: " + (
                f"{row['error'].splitlines()[-1]}" if "error" in row else
                f"peak {_fmt(_gib(peak_mb(row)), '.2f')} GiB, {_fmt(row['s_per_step'], '.2f')} s/step, "
                f"{_fmt(row['tokens_per_s'])} tok/s"))  # fmt: skip
            report["wall_time_s"] = round(time.perf_counter() - start, 1)
            _write_json(stem, report)
    _cuda_finish(stem, report)


def _steps(method: str, work: dict, args) -> tuple[int, int]:
    """(steps to train, step to measure from) of a method. PPO: two rollouts, measured over the second, as its steps
    are uneven (a rollout's first step also generates)."""
    if method == "ppo":
        per_rollout = PPO_EPOCHS * work["num_mini_batches"]
        return 2 * per_rollout, per_rollout
    return (args.grpo_steps if method == "grpo" else args.steps), args.skip


def lever_skip(variant: str, dry: bool) -> str | None:
    """Why this machine cannot run the lever (None: it can, or it is no lever)."""
    if dry and variant in DRY_SKIPS:
        return f"not on the CPU: {DRY_SKIPS[variant]}"
    module, install = LEVER_NEEDS.get(variant, (None, None))
    if module and importlib.util.find_spec(module) is None:
        return f"the {module} package is not installed here ({install})"
    return None


def lever_missed(variant: str, row: dict) -> str | None:
    """An error when a train.* override of the lever is not what the trainer got (lowtune turned it off, or
    renamed it): such a row measures lowtune's defaults, not the lever."""
    got = row.get("trl_args") or {}
    for override in LEVERS[variant][1]:
        key, value = override.split("=", 1)
        if key.startswith("train."):
            field, want = key.removeprefix("train."), {"true": True, "false": False}.get(value, value)
            if got.get(field, "missing") != want:
                return f"not the lever: the trainer got {field}={got.get(field, 'missing')!r}, not {want!r}"
    return None


def _cuda_finish(stem: Path, report: dict) -> None:
    """Table, ratios, notes, figure and console table of a cuda report (JSON, Markdown, PNG under stem)."""
    from lowtune import ui

    table, notes, ratios = cuda_table(report["measurements"])
    report["ratios"] = ratios
    columns = ["shape", "method", "variant", "peak GiB", "peak reserved GiB", "at start GiB", "s/step", "tokens/s",
               "s/step ÷ plain", "tokens/s ÷ plain", "peak ÷ plain"]  # fmt: skip
    _write_report(stem, report, columns, table, notes)
    _cuda_figure(stem, report, ratios)
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
    _cuda_finish(args.out / "throughput_cuda", merged)


# Shapes where SFT, DPO and GRPO also run as plain TRL, besides --compare-shape (issue 22's SFT shapes).
PLAIN_SHAPES = {"grpo": (), "sft": ("llama-3.2-1b",), "dpo": ()}


def _cuda_plan(shapes: list[str], methods: list[str], compare: str, variants: list[str]) -> list[tuple[str, str, str]]:
    """(shape, method, variant) in priority order: each method's comparison with plain TRL (GRPO at compare; SFT at
    Llama-3.2-1B and compare; DPO at compare), then the levers at compare (GRPO's, SFT's, DPO's), then every
    other lowtune row (PPO at compare only), compare's first."""
    plan: list[tuple[str, str, str]] = []

    def add(shape: str, method: str, variant: str) -> None:
        if shape in shapes and method in methods and (shape, method, variant) not in plan:
            plan.append((shape, method, variant))

    for method in ("grpo", "sft", "dpo"):
        for shape in (*PLAIN_SHAPES[method], compare):
            add(shape, method, "lowtune")
            if "plain" in variants:
                add(shape, method, "plain")
    for method in ("grpo", "sft", "dpo"):
        for variant, (lever_methods, _, _) in LEVERS.items():
            if variant in variants and method in lever_methods:
                add(compare, method, variant)
    for shape in [compare] + [s for s in shapes if s != compare]:
        for method in METHODS:
            if method != "ppo" or shape == compare:
                add(shape, method, "lowtune")
    return plan


def _recipe_lr(method: str) -> float:
    from lowtune.config import load_recipe

    return float(load_recipe(ROOT / "recipes" / f"{method}.yaml").train["learning_rate"])


def _gib(mb: float | None) -> float | None:
    return None if mb is None else mb / 1024


def verdict(value: float, op: str, bound: float) -> dict[str, Any]:
    """A ratio against one target: met or not, and by how much (relative to the bound)."""
    met = value <= bound if op == "<=" else value >= bound
    off = value / bound - 1
    text = (f"{value:.2f}x plain (target {op} {bound:g}x): {'met' if met else 'NOT met'}, "
            f"{abs(off):.0%} {'above' if off > 0 else 'below'} the target")  # fmt: skip
    return {"target": f"{op} {bound:g}", "met": met, "off": round(off, 3), "text": text}


def cuda_ratios(rows: list[dict]) -> list[dict]:
    """lowtune / plain TRL for every measured row with a measured plain row at its shape and method: s/step, tokens/s
    and peak memory (max allocated; the dry run: peak RSS), each checked against the method's TARGETS."""
    plain = {(r["shape"], r["method"]): r for r in rows if r["variant"] == "plain" and "error" not in r}
    out = []
    for r in rows:
        base = plain.get((r["shape"], r["method"]))
        if r["variant"] == "plain" or base is None or "error" in r:
            continue
        entry: dict[str, Any] = {"shape": r["shape"], "method": r["method"], "variant": r["variant"]}
        for key in RATIO_NAMES:
            mine, theirs = (peak_mb(x) if key == "peak" else x.get(key) for x in (r, base))
            entry[key] = round(mine / theirs, 3) if mine and theirs else None
        targets = TARGETS.get(r["method"], {})
        entry["targets"] = {k: verdict(entry[k], *t) for k, t in targets.items() if entry[k] is not None}
        entry["all_met"] = (
            bool(targets) and len(entry["targets"]) == len(targets) and all(t["met"] for t in entry["targets"].values())
        )
        out.append(entry)
    return out


def ratio_notes(rows: list[dict], ratios: list[dict]) -> list[str]:
    """One line per ratio entry (each target: met or NOT met, by how much), then per shape and method which
    variants meet every target; and a line for each comparison that has no ratio (a side failed or was skipped)."""
    notes, groups = [], {}
    for e in ratios:
        groups.setdefault((e["shape"], e["method"]), []).append(e)
    for (shape, method), entries in groups.items():
        for e in entries:
            parts = [f"{RATIO_NAMES[k]} " + (e["targets"][k]["text"] if k in e["targets"] else f"{_fmt(e[k], '.2f')}x")
                     for k in RATIO_NAMES]  # fmt: skip
            notes.append(f"{method.upper()} at {shape}, {VARIANTS[e['variant']]} / plain: " + "; ".join(parts) + ".")
        if method in TARGETS:
            met = [VARIANTS[e["variant"]] for e in entries if e["all_met"]]
            notes.append(f"{method.upper()} at {shape}: every target met by " + ", ".join(met) + "." if met else
                         f"{method.upper()} at {shape}: no measured variant meets every target.")  # fmt: skip
    compared = {(r["shape"], r["method"]) for r in rows if r["variant"] == "plain"}
    for shape, method in sorted(compared - set(groups)):
        notes.append(f"{method.upper()} at {shape}: no ratio (the lowtune or the plain row failed or was skipped).")
    return notes


def cuda_table(rows: list[dict]) -> tuple[list[list[str]], list[str], list[dict]]:
    ratios = cuda_ratios(rows)
    by = {(e["shape"], e["method"], e["variant"]): e for e in ratios}
    table = []
    for r in rows:
        name = VARIANTS[r["variant"]] + (f" ({r['precision']} base)" if r.get("precision") else "")
        if "error" in r:
            what = "skipped" if r["error"].startswith("skipped:") else "error"
            table.append([r["shape"], r["method"], name, what, "", "", "", "", "", "",
                          r["error"].splitlines()[-1].removeprefix("skipped: ")[:160]])  # fmt: skip
            continue
        e = by.get((r["shape"], r["method"], r["variant"]), {})
        table.append([r["shape"], r["method"], name, _fmt(_gib(peak_mb(r)), ".2f"),
                      _fmt(_gib(r.get("cuda_max_reserved_mb")), ".2f"), _fmt(_gib(start_mb(r)), ".2f"),
                      _fmt(r.get("s_per_step"), ".2f"), _fmt(r.get("tokens_per_s")),
                      *(f"{e[k]:.2f}x" if e.get(k) else "" for k in RATIO_NAMES)])  # fmt: skip
    notes = [
        "peak: torch.cuda.max_memory_allocated from the start of training (weights included), on CPU (dry run) the "
        "worker's peak RSS; at start: memory in use when trainer.train() began (quantized model + adapter). "
        "tokens/s: SFT batch x length; DPO and GRPO the trainer's token counter (GRPO: prompt + completion). "
        f"PPO: s/step over a whole rollout ({PPO_EPOCHS} epochs x its minibatches), no token counter. "
        "x plain: lowtune (or the lever) / plain TRL + PEFT + bitsandbytes at the same shape and work.",
        *ratio_notes(rows, ratios),
    ]
    if any(r.get("precision") for r in rows):
        notes.append(
            "Rows with an fp32 base: the CPU dry run cannot train PPO on a 4-bit base (bitsandbytes' CPU path repacks "
            "the weights for inference when the rollouts generate, and cannot train through them afterwards)."
        )
    plain_gc = {r["method"]: (r.get("checks") or {}).get("gradient_checkpointing") for r in rows
                if r["variant"] == "plain" and "error" not in r}  # fmt: skip
    if plain_gc:
        notes.append(
            "The plain TRL scripts ran with gradient_checkpointing "
            + ", ".join(f"{m}={v}" for m, v in plain_gc.items())
            + " (TRL's config defaults); lowtune's model.gradient_checkpointing is auto (on with CUDA)."
        )
    return table, notes, ratios


def _cuda_figure(stem: Path, report: dict, ratios: list[dict]) -> None:
    plt = _pyplot()
    rows = [r for r in report["measurements"] if "error" not in r and peak_mb(r)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    width = 0.2
    for j, method in enumerate(METHODS):
        values = {r["shape"]: _gib(peak_mb(r)) for r in rows if r["method"] == method and r["variant"] == "lowtune"}
        xs = [i + (j - 1.5) * width for i, s in enumerate(shapes) if s in values]
        ax1.bar(xs, [values[s] for s in shapes if s in values], width=width, label=method)
    ax1.set_xticks(range(len(shapes)), shapes, fontsize=8)
    ax1.set_ylabel("peak GPU memory allocated, GiB" if report["machine"].get("gpu") else "peak RSS, GiB (CPU)")
    ax1.set_title("lowtune, NF4 + LoRA", fontsize=9)
    ax1.legend(fontsize=8)
    xs = range(len(ratios))
    for j, (key, color) in enumerate((("s_per_step", "#c73"), ("tokens_per_s", "#2a7"), ("peak", "#357"))):
        ax2.bar([x + (j - 1) * 0.27 for x in xs], [e[key] or 0 for e in ratios], width=0.27, color=color,
                label=RATIO_NAMES[key])  # fmt: skip
    ax2.axhline(1.0, color="#888", linewidth=1)
    ax2.set_xticks(xs, [f"{e['shape']}\n{e['method']} {e['variant']}" for e in ratios], fontsize=6, rotation=90)
    ax2.set_ylabel("lowtune / plain TRL + PEFT + bnb")
    ax2.set_title("against plain TRL at the same shape and work", fontsize=9)
    ax2.legend(fontsize=8)
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
    g.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=DEFAULT_SHAPES)
    g.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    g.add_argument("--compare-shape", choices=list(SHAPES), default="qwen2.5-1.5b",
                   help="shape of the plain-TRL comparisons (SFT's also at Llama-3.2-1B) and levers")  # fmt: skip
    g.add_argument("--variants", nargs="*", choices=["plain", *LEVERS], default=["plain", *LEVERS],
                   help="plain TRL and the levers to run besides lowtune's defaults (default: all)")  # fmt: skip
    g.add_argument("--steps", type=int, default=3, help="steps of SFT and DPO")
    g.add_argument("--grpo-steps", type=int, default=2)
    g.add_argument("--skip", type=int, default=1, help="measure from this step on (PPO: over its second rollout)")
    g.add_argument("--budget", type=float, default=530, help="seconds for all measurements; later ones are skipped")
    g.add_argument("--timeout", type=float, default=300,
                   help="seconds per worker, loading included (a 1.5B GRPO row took up to 240 s)")  # fmt: skip
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
