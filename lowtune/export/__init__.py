"""Export: merge a run's adapter (merge.py), write GGUF (gguf.py) or a LoRA GGUF (gguf_lora.py), verified.

    export("runs/sft", fmt="gguf", quant="q8_0")   # merge (fp32, verified), then runs/sft/sft-q8_0.gguf
    export("runs/sft", fmt="gguf-lora")             # the adapter alone: runs/sft/sft-lora.gguf
    export("smollm2-135m-instruct", quant="f16")    # a model directory or builtin, no merge

A run is merged into a staging directory beside the output (not the system temp directory, which may
be a small tmpfs), removed whatever happens.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lowtune import models, runs
from lowtune.errors import LowtuneError
from lowtune.export import llamacpp

FORMATS = ("gguf", "gguf-lora")


def run_name(source: Path) -> str:
    """A run's name (runs/sft -> sft; runs/sft/adapter -> sft); a model directory's own name."""
    source = source.resolve()
    return source.parent.name if source.name == "adapter" else source.name


def export(source: str | Path, fmt: str = "gguf", quant: str = "f16", out: str | Path | None = None, say=None):
    """Export a run, an adapter directory, a model directory or a builtin model; returns the report."""
    from lowtune.export.gguf import QUANTS, export_gguf
    from lowtune.export.merge import merge

    say = say or (lambda msg: None)
    if fmt not in FORMATS:
        raise LowtuneError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    source = Path(source)
    if fmt == "gguf-lora":
        return _export_lora(source, out, say)
    if quant not in QUANTS:
        raise LowtuneError(f"unknown GGUF quant {quant!r}; use one of {', '.join(QUANTS)}")
    if QUANTS[quant].writer == "llama.cpp":
        llamacpp.require(f"the {quant} quant type")  # before a merge that would be for nothing
    if not llamacpp.available():
        say(f"verifying with transformers' GGUF loader only; to verify in llama.cpp itself: {llamacpp.INSTALL_HINT}")
    if not runs.is_run_or_adapter(source):
        model_dir = Path(models.resolve_path(str(source), say, runs=True))
        target = Path(out) if out else Path(f"{model_dir.name}-{quant}.gguf")
        return export_gguf(model_dir, target, quant)
    name = run_name(source)
    target = Path(out) if out else runs.find_adapter(source).parent / f"{name}-{quant}.gguf"
    if target.exists():
        raise LowtuneError(f"{target} already exists; remove it or choose another --out")
    if not target.parent.is_dir():
        raise LowtuneError(f"output directory {target.parent} does not exist; create it or choose another --out")
    say(f"merging {source} into its base first (fp32, verified)")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.stem}.merge-") as tmp:
        merged = Path(tmp) / "merged"
        merge(source, merged, dtype="fp32")
        return export_gguf(merged, target, quant, name=name)


def _export_lora(source: Path, out, say) -> dict:
    from lowtune.export.gguf_lora import export_gguf_lora

    if not runs.is_run_or_adapter(source):
        raise LowtuneError(f"{source} is not a run or adapter directory; --format gguf-lora exports a LoRA adapter")
    adapter = runs.find_adapter(source)
    task = runs.adapter_task(adapter)
    if task not in (None, "CAUSAL_LM"):
        raise LowtuneError(f"{adapter} is a {task} adapter (a reward model); a LoRA GGUF is for language models")
    base = runs.base_model(adapter)
    base_dir = Path(models.resolve_path(base, say))
    name = run_name(source)
    target = Path(out) if out else adapter.parent / f"{name}-lora.gguf"
    if runs.read_summary(adapter).get("quantization") == "nf4":
        say(
            "this run trained on an NF4 base; the LoRA GGUF applies to the original base weights, "
            "which the adapter never saw (merge with --base dequantized for the trained model's exact outputs)"
        )
    if not llamacpp.available():
        say(f"the LoRA GGUF is verified in llama.cpp only, which is not installed: {llamacpp.INSTALL_HINT}")
    report = export_gguf_lora(adapter, base_dir, target, name)
    report["base_model"] = base
    return report
