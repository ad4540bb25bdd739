"""Merge a run's LoRA adapter into a full-precision base, verified against base + adapter.

`merge` never merges into 4-bit weights: it reloads the base in float32 and merges there. Two
choices of base weights, `--base`:

- `original`: the checkpoint's own weights. Best for a run trained in full precision (then it is
  exact). For a QLoRA run it pairs the adapter with weights it never saw: the adapter learned to
  correct dequant(NF4(W)), so the merged model drifts slightly from the trained one.
- `dequantized`: dequant(NF4(W)), the weights the adapter saw in QLoRA training (NF4, block 64,
  double quantization, as lowtune's loader quantizes). The merged model computes what the trained
  model computed, quantization error included.
- `auto` (default): `dequantized` when the run trained on an NF4 base, else `original`.

Verification: on chat-templated probe prompts, next-token log-probs of the saved model (reloaded
from disk with plain transformers) against the unmerged base + adapter on the same base weights:
max abs difference and mean KL(reference || merged) over every position. Thresholds by saved
dtype (MERGE_TOLERANCE) were set from measurements with margin (README); above them `merge` fails
and leaves nothing at the output path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from lowtune import models
from lowtune.config import ModelConfig
from lowtune.errors import LowtuneError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Saved dtype -> (max abs log-prob difference, mean KL) allowed between merged and base + adapter.
# Measured on SmolLM2-135M + the quick-start adapter (3 probes, all positions, whole vocabulary):
# fp32 7.6e-5 / ~0, fp16 3.7e-2 / 4.6e-6, bf16 0.42 / 4.7e-4. The max is set by rare tokens'
# log-probs; the KL limits keep a 10x margin and are what catches a broken merge.
MERGE_TOLERANCE = {"fp32": (1e-3, 1e-6), "fp16": (0.25, 1e-4), "bf16": (1.5, 5e-3)}
PROBES = [
    "What is 23 + 58?",
    "Write a haiku about autumn.",
    "Explain in one sentence what a LoRA adapter is.",
]


def dequantize_nf4_(model) -> int:
    """Replace each decoder linear weight by dequant(NF4(W)) in place; returns how many.

    The output embedding stays as is, as transformers' bitsandbytes integration leaves it unquantized.
    """
    import bitsandbytes.functional as bnbf

    head = model.get_output_embeddings()
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            w = module.weight.data
            q, state = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
            module.weight.data = bnbf.dequantize_4bit(q, state).to(w.dtype)
            count += 1
    return count


@torch.no_grad()
def probe_logprobs(model, tokenizer, prompts: list[str]) -> list[torch.Tensor]:
    """Float32 next-token log-probs at every position of each chat-templated prompt."""
    out = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        out.append(model(**ids).logits[0].float().log_softmax(-1).cpu())
    return out


def compare(reference: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[float, float]:
    """(max abs log-prob difference, mean KL(reference || other)) over all positions."""
    ref, oth = torch.cat(reference), torch.cat(other)
    kl = (ref.exp() * (ref - oth)).sum(-1)
    return (ref - oth).abs().max().item(), kl.mean().item()


def merge(
    run_or_adapter: str | Path,
    out: str | Path,
    dtype: str = "fp32",
    base: str = "auto",
    probes: list[str] | None = None,
) -> dict[str, Any]:
    """Merge the adapter into a full-precision base, save it at `out`, verify, return the report."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise LowtuneError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if base not in ("auto", "original", "dequantized"):
        raise LowtuneError(f"--base {base}: choose auto, original or dequantized")
    adapter = models.find_adapter(run_or_adapter)
    out = Path(out)
    if out.exists():
        raise LowtuneError(f"{out} already exists; choose another --out or remove it")

    task = models.adapter_task(adapter)
    if task not in (None, "CAUSAL_LM"):
        raise LowtuneError(
            f"{adapter} is a {task} adapter (a reward model); merge and export take language-model adapters. "
            "Use it as it is: RewardModel.load / `lowtune score`, or PeftModel on AutoModelForSequenceClassification"
        )
    recipe = models.run_recipe(adapter)
    base_name = recipe.model.name if recipe else models.adapter_base(adapter)
    summary = adapter.parent / "summary.json"
    trained_on = json.loads(summary.read_text()).get("quantization") if summary.is_file() else None
    if base == "auto":
        base = "dequantized" if trained_on == "nf4" else "original"

    cfg = ModelConfig(
        name=base_name,
        quantization="none",
        dtype="float32",
        device="cpu",
        trust_remote_code=recipe.model.trust_remote_code if recipe else False,
    )
    model, tokenizer = models.load(cfg)
    if (adapter / "tokenizer_config.json").is_file():
        tokenizer = models.load_tokenizer(str(adapter), cfg.trust_remote_code)
    if base == "dequantized":
        dequantize_nf4_(model)
    models.require_safetensors(adapter)
    peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
    prompts = probes or PROBES
    reference = probe_logprobs(peft_model, tokenizer, prompts)
    merged = peft_model.merge_and_unload().to(DTYPES[dtype])

    eot = models.end_of_turn_token(tokenizer)
    stop_ids = list(dict.fromkeys([tokenizer.convert_tokens_to_ids(eot), tokenizer.eos_token_id]))
    merged.generation_config.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.config.eos_token_id = tokenizer.convert_tokens_to_ids(eot)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staged = Path(tmp) / "model"
        merged.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        reloaded = AutoModelForCausalLM.from_pretrained(staged, dtype=torch.float32)
        max_abs, mean_kl = compare(reference, probe_logprobs(reloaded, tokenizer, prompts))
        limit_abs, limit_kl = MERGE_TOLERANCE[dtype]
        report = {
            "adapter": str(adapter),
            "base_model": base_name,
            "base_weights": base,
            "dtype": dtype,
            "probes": prompts,
            "max_abs_logprob_diff": max_abs,
            "mean_kl": mean_kl,
            "tolerance": {"max_abs_logprob_diff": limit_abs, "mean_kl": limit_kl},
            "passed": max_abs <= limit_abs and mean_kl <= limit_kl,
            "stop_tokens": [tokenizer.convert_ids_to_tokens(i) for i in stop_ids],
        }
        if not report["passed"]:
            raise LowtuneError(
                f"merged model differs from base + adapter beyond tolerance (max abs {max_abs:.3g} > {limit_abs} "
                f"or mean KL {mean_kl:.3g} > {limit_kl}); nothing was written to {out}"
            )
        (staged / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n")
        os.replace(staged, out)
    report["out"] = str(out)
    return report
