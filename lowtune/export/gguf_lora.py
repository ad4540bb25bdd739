"""A PEFT LoRA adapter as a llama.cpp LoRA GGUF: one base file, many small adapters.

    llama-cli -m base.gguf --lora adapter.gguf

The layout is llama.cpp's adapter format (what its convert_lora_to_gguf.py writes and
src/llama-adapter.cpp reads): general.type "adapter", adapter.type "lora", adapter.lora.alpha, and per
adapted linear layer `<base tensor name>.lora_a` [r, in] and `.lora_b` [out, r] in F32 (small, so
exact). llama.cpp scales B·A by alpha / r, as PEFT does; rsLoRA's alpha / √r is written as
alpha' = alpha·√r. For llama, lora_b's rows of q_proj/k_proj take the same rotary permutation as the
weights they add to. Adapters on embeddings, LM heads or extra trained modules are refused: a LoRA GGUF
cannot carry them — merge and export the whole model instead.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from lowtune.errors import LowtuneError
from lowtune.export import llamacpp
from lowtune.export.gguf import (
    ARCHITECTURES,
    DEFAULT_PROBES,
    QUANTS,
    Probes,
    permute_rotary,
    read_config,
    verify_llamacpp,
    vocab_metadata,
    write_gguf,
)
from lowtune.export.modelfile import chat_format
from lowtune.files import place, temporary_beside
from lowtune.runs import adapter_config


def export_gguf_lora(adapter_dir: Path, base_dir: Path, out: Path, name: str) -> dict:
    """Write the adapter in `adapter_dir` (on the base model in `base_dir`) as a LoRA GGUF at `out`."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    start = time.perf_counter()
    if out.exists():
        raise LowtuneError(f"{out} already exists; remove it or choose another --out")
    if not out.parent.is_dir():
        raise LowtuneError(f"output directory {out.parent} does not exist; create it or choose another --out")
    settings = adapter_config(adapter_dir)
    config = read_config(base_dir)
    arch = ARCHITECTURES[config["model_type"]]
    if settings.get("modules_to_save"):
        raise LowtuneError(
            f"{adapter_dir} also trains {settings['modules_to_save']}, which a LoRA GGUF cannot carry; "
            "export the merged model instead: lowtune export RUN --format gguf"
        )
    rank, alpha = settings["r"], float(settings["lora_alpha"])
    if settings.get("rank_pattern") or settings.get("alpha_pattern"):
        raise LowtuneError(f"{adapter_dir}: per-module ranks or alphas cannot be written as one adapter.lora.alpha")
    if settings.get("use_rslora"):
        alpha *= math.sqrt(rank)  # llama.cpp scales by alpha / r; rsLoRA by alpha / sqrt(r)
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])

    pairs: dict[str, dict[str, np.ndarray]] = {}
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise LowtuneError(f"{adapter_dir} has no adapter_model.safetensors")
    with safe_open(weights, "pt") as f:
        for key in f.keys():
            part = "a" if ".lora_A." in key else "b" if ".lora_B." in key else None
            if part is None or ".lora_embedding_" in key:
                raise LowtuneError(f"{adapter_dir}: tensor {key} is not a LoRA A/B matrix of a linear layer")
            hf_name = key.removeprefix("base_model.model.").replace(f".lora_{part.upper()}.weight", ".weight")
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
            if gguf_name is None or gguf_name.startswith(("token_embd", "output.")):
                raise LowtuneError(f"{adapter_dir}: {hf_name} has no place in a llama.cpp LoRA for {arch}")
            data = f.get_tensor(key).float().numpy()
            if part == "b" and arch == "llama" and gguf_name.endswith((".attn_q.weight", ".attn_k.weight")):
                data = permute_rotary(data, heads if ".attn_q." in gguf_name else kv_heads)
            pairs.setdefault(gguf_name, {})[part] = data

    with temporary_beside(out, ".gguf") as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for gguf_name, ab in sorted(pairs.items()):
            if set(ab) != {"a", "b"}:
                raise LowtuneError(f"{adapter_dir}: {gguf_name} has lora_{next(iter(ab))} but not its pair")
            writer.add_tensor(f"{gguf_name}.lora_a", ab["a"].astype(np.float32))
            writer.add_tensor(f"{gguf_name}.lora_b", ab["b"].astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        checks = verify_lora(tmp, adapter_dir, base_dir, config) if llamacpp.available() else None
        if checks is not None and checks["failures"]:
            raise LowtuneError(f"LoRA GGUF verification failed for {out}: {checks['failures']}; nothing was written")
        place(tmp, out)
    return {
        "verified_with": ["llama.cpp"] if checks is not None else [],
        "llama_cpp": checks,
        "file": str(out),
        "bytes": out.stat().st_size,
        "architecture": arch,
        "rank": rank,
        "alpha": alpha,
        "adapted_tensors": len(pairs),
        "name": name,
        "seconds": round(time.perf_counter() - start, 2),
    }


def verify_lora(lora_gguf: Path, adapter_dir: Path, base_dir: Path, config: dict) -> dict:
    """llama.cpp with an f16 GGUF of the base and this adapter vs PEFT's base + adapter in float32.

    The same checks as a full export at f16 (token ids, mean KL within the f16 limit, greedy replies).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    chat = chat_format(tokenizer, base_dir)
    vocab = vocab_metadata(base_dir, tokenizer, config)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    source = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    probed = Probes(source, tokenizer, chat, DEFAULT_PROBES, greedy=True)
    del source, base
    with temporary_beside(lora_gguf, ".base-f16.gguf") as base_gguf:
        write_gguf(base_gguf, base_dir, config, "f16", vocab, chat, tokenizer, base_dir.resolve().name)
        checks = verify_llamacpp(base_gguf, tokenizer, "f16", probed, lora=lora_gguf)
    checks.pop("logits")
    limit = QUANTS["f16"].max_mean_kl
    checks["max_mean_kl"] = limit
    checks["failures"] = (
        ([f"tokenizer differs ({checks['tokenizer_mismatch']})"] if not checks["tokenizer_match"] else [])
        + ([f"mean KL {checks['mean_kl']:.3g} > {limit:g}"] if not checks["mean_kl"] <= limit else [])
        + [f"greedy reply differs: {d}" for d in checks["greedy_diverged"]]
    )
    return checks
