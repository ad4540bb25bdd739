"""Merge a run's LoRA adapter into a full-precision base, verified against base + adapter.

`merge` never merges into 4-bit weights: it reloads the base in float32 and merges there. Two
choices of base weights, `--base`:

- `original`: the checkpoint's own weights. Best for a run trained in full precision (then it is
  exact). For a QLoRA run it pairs the adapter with weights it never saw: the adapter learned to
  correct dequant(NF4(W)), so the merged model drifts slightly from the trained one.
- `dequantized`: dequant(NF4(W)), the weights the adapter saw in QLoRA training (NF4, block 64,
  double quantization, as lowtune's loader quantizes), bit for bit: W is quantized in the dtype the
  run loaded it in (`nf4_dtype`, from summary.json's placement; bfloat16 on CUDA, float32 on CPU by
  default) and dequantized to that dtype, as bitsandbytes does in training. Quantizing the float32 W
  instead moves whole NF4 steps wherever bfloat16 rounding crosses a level boundary (tiny-random: 335 of
  73,728 weights, up to 0.087). tests/test_merge.py checks equality with bitsandbytes' own dequantized
  training weights on CPU; CUDA's quantize kernel has not been compared. The merged model computes
  what the trained model computed, quantization error included.
- `auto` (default): `dequantized` when the run trained on an NF4 base, else `original`.

Verification: on chat-templated probe prompts, next-token distributions of the saved model (reloaded
from disk with plain transformers) against the unmerged base + adapter on the same base weights:
mean KL(reference || merged) over every position and the largest total variation distance at any
one position. Both weigh a token by its probability, so the log-probs of tokens of negligible
probability, which move with the matmul path, cannot fail a correct merge. Limits by saved dtype
(MERGE_TOLERANCE) sit with margin above what correct merges measure, and below broken ones
(benchmarks/results/merge_verification.json); above them `merge` fails and leaves
nothing at the output path. The merged model is staged beside the output and moved into place only
if nothing appeared there meanwhile.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from lowtune import models, runs
from lowtune.config import ModelConfig
from lowtune.errors import LowtuneError
from lowtune.files import place_directory

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Saved dtype -> limits on mean KL(base + adapter || merged) over all probe positions (nats) and on the max
# total variation distance at any one position. Figures from benchmarks/results/merge_verification.json
# (benchmarks/merge_verification.py: each case one `merge` with the fault injected; 3 probes, 100 and 118
# positions; CPU) on tiny-random + the tests/test_merge.py adapter and SmolLM2-135M + the quick-start adapter,
# the worse of the two; mean KL / max TV:
#   correct merge, saved fp32   ~0 (|KL| <= 3.2e-8, rounding) / 5.4e-6   (whole-vocabulary max abs log-prob 8.6e-5)
#                  saved fp16   5.9e-6 / 3.8e-3
#                  saved bf16   3.1e-4 / 2.7e-2
#   fp32 weights x (1 + 2^-16 N(0,1)), SmolLM2: 4.2e-8 / 2.9e-4, while the whole-vocabulary max abs log-prob
#     diff is 3.4e-3: a log-prob extreme over 49152 tokens moves with float noise; KL and TV weigh tokens by p.
#     At 2^-12 (fp16's rounding size) SmolLM2 saved fp32 fails: 8.4e-6 / 4.7e-3 (its fp16 save: 5.9e-6 / 3.8e-3).
#   wrong LoRA scale, fp32 (the smaller of the two, tiny-random): x1.05 2.6e-4 / 1.4e-2, x1.1 9.7e-4 / 2.7e-2,
#     x2 3.5e-2 / 0.16 (SmolLM2: x1.05 7.3e-4 / 6.6e-2, x1.1 2.9e-3 / 0.13, x2 0.21 / 0.70).
# The limits sit 5.3x (fp16 TV) to 370x (fp32 TV) above the correct merges' figures. fp32 and fp16 catch a
# 1.05x scale. bf16's own rounding moves SmolLM2 about half as much as a 1.05x scale does, so bf16 catches
# gross errors (2x) only (SmolLM2 x1.1 saved bf16 passes: 1.8e-3 / 0.11), and on tiny-random through KL
# alone (x2 saved bf16: 3.5e-2 / 0.16, the TV under its limit).
MERGE_TOLERANCE = {
    "fp32": {"mean_kl": 1e-6, "max_total_variation": 2e-3},
    "fp16": {"mean_kl": 1e-4, "max_total_variation": 2e-2},
    "bf16": {"mean_kl": 5e-3, "max_total_variation": 0.2},
}
NAMES = {"mean_kl": "mean KL", "max_total_variation": "max total variation"}
PROBES = [
    "What is 23 + 58?",
    "Write a haiku about autumn.",
    "Explain in one sentence what a LoRA adapter is.",
]


def dequantize_nf4_(model, dtype: torch.dtype = torch.float32) -> int:
    """Replace each decoder linear weight by dequant(NF4(W)) in place; returns how many.

    `dtype`: the dtype training loaded the base in. bitsandbytes quantizes W after it is cast to it and
    dequantizes to it; the result is then held in the weight's own dtype (exact when that is float32).
    The output embedding stays as is, as transformers' bitsandbytes integration leaves it unquantized.
    """
    import bitsandbytes.functional as bnbf

    head = model.get_output_embeddings()
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            w = module.weight.data
            q, state = bnbf.quantize_4bit(w.to(dtype), blocksize=64, compress_statistics=True, quant_type="nf4")
            module.weight.data = bnbf.dequantize_4bit(q, state).to(w.dtype)
            count += 1
    return count


def trained_placement(summary: dict) -> dict:
    """Where and how the run trained: summary.json's `placement` (device, dtype, quantization); a summary
    written before lowtune recorded one keeps device and quantization at its top level."""
    placement = summary.get("placement")
    return placement if isinstance(placement, dict) else summary


def trained_dtype(recipe, placement: dict) -> torch.dtype:
    """The dtype the run loaded (and so NF4-quantized) its base in: summary.json's placement records it; for
    a run from before it did, the recipe's model.dtype, `auto` resolved by the device the run trained on as
    lowtune.placement resolves it: float32 on CPU, bfloat16 on CUDA (float16 on a GPU without bfloat16 is not
    told apart). Without a recipe: bfloat16, the usual QLoRA load dtype."""
    if placement.get("dtype") in ("float32", "bfloat16", "float16"):
        return getattr(torch, placement["dtype"])
    if recipe is None:
        return torch.bfloat16
    if recipe.model.dtype != "auto":
        return getattr(torch, recipe.model.dtype)
    return torch.float32 if (placement.get("device") or recipe.model.device) == "cpu" else torch.bfloat16


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


def compare(reference: list[torch.Tensor], other: list[torch.Tensor]) -> dict[str, float]:
    """Mean KL(reference || other) over all positions, and the max total variation distance
    (half the L1 distance between the two next-token distributions) at any one position."""
    ref, oth = torch.cat(reference).double(), torch.cat(other).double()
    p = ref.exp()
    kl = (p * (ref - oth)).sum(-1)
    tv = 0.5 * (p - oth.exp()).abs().sum(-1)
    return {"mean_kl": kl.mean().item(), "max_total_variation": tv.max().item()}


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
    adapter = runs.find_adapter(run_or_adapter)
    out = Path(out)
    if os.path.lexists(out):
        raise LowtuneError(f"{out} already exists; choose another --out or remove it")

    task = runs.adapter_task(adapter)
    if task not in (None, "CAUSAL_LM"):
        raise LowtuneError(
            f"{adapter} is a {task} adapter (a reward model); merge and export take language-model adapters. "
            "Use it as it is: RewardModel.load / `lowtune score`, or PeftModel on AutoModelForSequenceClassification"
        )
    recipe = runs.read_recipe(adapter)
    base_name = runs.base_model(adapter)
    placement = trained_placement(runs.read_summary(adapter))
    if base == "auto":
        base = "dequantized" if placement.get("quantization") == "nf4" else "original"
    nf4_dtype = trained_dtype(recipe, placement) if base == "dequantized" else None

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
    if nf4_dtype is not None:
        dequantize_nf4_(model, nf4_dtype)
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
        measured = compare(reference, probe_logprobs(reloaded, tokenizer, prompts))
        limits = MERGE_TOLERANCE[dtype]
        over = [f"{NAMES[k]} {measured[k]:.3g} > {v:g}" for k, v in limits.items() if not measured[k] <= v]
        report = {
            "adapter": str(adapter),
            "base_model": base_name,
            "base_weights": base,
            "nf4_dtype": None if nf4_dtype is None else str(nf4_dtype).removeprefix("torch."),
            "dtype": dtype,
            "probes": prompts,
            **measured,
            "tolerance": dict(limits),
            "passed": not over,
            "stop_tokens": [tokenizer.convert_ids_to_tokens(i) for i in stop_ids],
        }
        if not report["passed"]:
            raise LowtuneError(
                f"merged model differs from base + adapter beyond tolerance ({', '.join(over)}); "
                f"nothing was written to {out}"
            )
        (staged / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n")
        place_directory(staged, out, "merging")
    report["out"] = str(out)
    return report
