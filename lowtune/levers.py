"""Speed levers: the training arguments of TRL and transformers that make a run faster or leaner on a GPU.

A lever is an argument of the method's TRL config, set in the recipe's `train` like any other. lowtune adds two
things:

- **defaults** (`defaults`): on CUDA, the levers benchmarks/throughput.py measured to beat plain TRL for a method
  (`CUDA_DEFAULTS`) are turned on unless the recipe sets them. None has been measured on a GPU yet, so the table is
  empty and CUDA runs train as plain TRL does; a lever joins it only with its measurement. Nothing is turned on for
  the CPU.
- **fallbacks** (`usable`): a lever this machine cannot run — Liger's kernels need the `liger-kernel` package
  (`pip install 'lowtune[gpu]'`) and a CUDA device, as they are Triton GPU kernels; TRL's activation offloading
  needs CUDA too — is turned off with one line saying why, instead of an error inside the trainer.

Both are pure functions of (method, device type, what is installed), so every branch is tested on a CPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Lever:
    field: str  # the TRL / transformers training argument
    on: Any  # its value when lowtune turns it on
    methods: frozenset[str]  # the methods whose TRL config takes it and whose trainer uses it
    package: str | None = None  # the module it imports
    install: str | None = None  # how to get that module
    cuda_only: bool = False
    what: str = ""


LEVERS = {
    lever.field: lever
    for lever in (
        Lever("use_liger_kernel", True, frozenset({"sft", "dpo", "kto", "orpo", "grpo", "rloo", "reward"}),
              package="liger_kernel", install="pip install 'lowtune[gpu]'", cuda_only=True,
              what="Liger's Triton kernels (RMSNorm, SwiGLU, RoPE; TRL 1.16 keeps its fused linear losses off)"),
        # TRL 1.16: SFT takes it with packing (without, it refuses a max_length); DPO's config accepts it and warns
        # that it pads anyway, so it is no DPO lever
        Lever("padding_free", True, frozenset({"sft"}), what="packed batches without padding tokens"),
        # TRL's offloading moves activations over CUDA streams: on a CPU it fails inside the first step
        Lever("activation_offloading", True, frozenset({"sft", "dpo", "kto", "reward"}), cuda_only=True,
              what="activations kept in CPU memory between forward and backward"),
        Lever("use_transformers_continuous_batching", True, frozenset({"grpo", "rloo"}),
              what="transformers' continuous-batching (paged) generation for the rollouts"),
        Lever("cache_implementation", "static", frozenset({"grpo", "rloo", "online_dpo"}),
              what="a static KV cache for the rollouts' generation"),
    )
}  # fmt: skip

# The levers a GPU measurement chose per method (method -> lever fields), each with its figure in
# benchmarks/results/throughput_cuda.md. Empty: no lever has run on a GPU here yet.
CUDA_DEFAULTS: dict[str, tuple[str, ...]] = {}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def defaults(method: str, device_type: str, has: Callable[[str], bool] = installed) -> dict[str, Any]:
    """The levers lowtune turns on for `method` on `device_type` when the recipe does not set them: on CUDA the
    measured winners (`CUDA_DEFAULTS`) whose package is installed; on any other device none."""
    if device_type != "cuda":
        return {}
    chosen = (LEVERS[field] for field in CUDA_DEFAULTS.get(method, ()))
    return {lever.field: lever.on for lever in chosen if lever.package is None or has(lever.package)}


def usable(
    settings: dict[str, Any], device_type: str, has: Callable[[str], bool] = installed
) -> tuple[dict[str, Any], list[str]]:
    """`settings` (TRL arguments) with each lever that cannot run here turned off, and one line for each saying why
    and what to do."""
    out, notes = dict(settings), []
    for field, lever in LEVERS.items():
        if not out.get(field):
            continue
        if lever.package is not None and not has(lever.package):
            why = f"the {lever.package} package is not installed ({lever.install})"
        elif lever.cuda_only and device_type != "cuda":
            why = f"it needs a CUDA device (this run is on {device_type})"
        else:
            continue
        out[field] = False if isinstance(lever.on, bool) else None
        notes.append(f"train.{field}: off, {why}; training without it")
    return out, notes
