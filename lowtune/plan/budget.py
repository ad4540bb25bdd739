"""What a GPU needs beyond the tensors a step holds, and memory budgets as users write them.

Tracing sees tensors (what torch.cuda.max_memory_allocated counts). A run also needs:
- the CUDA context (driver state, kernels), outside PyTorch's allocator: CONTEXT_MB is an allowance, not a
  lowtune measurement — nvidia-smi shows it as memory in use beyond torch.cuda.memory_reserved, and it varies
  with the GPU, driver and CUDA version;
- the caching allocator's reserve: it keeps freed blocks for reuse, so what it reserves exceeds what is
  allocated. RESERVE is the largest reserved/allocated ratio of the H200 runs in
  benchmarks/results/throughput_cuda.json (1.15, Llama-3.2-1B GRPO).
"""

from __future__ import annotations

import re

from lowtune.errors import LowtuneError

CONTEXT_MB = 500
RESERVE = 1.15
# On CPU the process itself (Python, torch, transformers, TRL) holds memory no tensor accounts for: the largest
# resident set after imports in benchmarks/results/throughput_cpu.json.
PROCESS_MB = 546

# Memory of common GPUs, in GiB, for --gpu NAME (the vendors' specifications).
GPUS = {
    "rtx3060": 12, "rtx3070": 8, "rtx3080": 10, "rtx3090": 24,
    "rtx4060": 8, "rtx4060ti": 16, "rtx4070": 12, "rtx4080": 16, "rtx4090": 24,
    "rtx5070": 12, "rtx5080": 16, "rtx5090": 32,
    "t4": 16, "l4": 24, "a10": 24, "a100-40gb": 40, "a100-80gb": 80, "h100": 80, "h200": 141,
}  # fmt: skip


def overheads(device: str, tensor_mb: float) -> list:
    """What the device needs beyond the traced tensors, as plan parts."""
    from lowtune.plan import Part

    if device == "cpu":
        return [Part("Python and libraries", PROCESS_MB, "resident set after imports (throughput_cpu.json)")]
    return [
        Part("allocator reserve", tensor_mb * (RESERVE - 1), f"×{RESERVE} of the tensors (throughput_cuda.json)"),
        Part("CUDA context", CONTEXT_MB, "allowance (not measured by lowtune)"),
    ]


def parse_memory(text: str) -> float:
    """'8GiB', '8 GB', '7.5g', '8192MiB' -> MiB (GB read as GiB: GPU memory is sold in binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([gm])?(?:i?b)?\s*", text.lower())
    if not match:
        raise LowtuneError(f"memory {text!r}: give a size such as 8GiB or 12000MiB")
    value, unit = float(match.group(1)), match.group(2) or "g"
    return value * 1024 if unit == "g" else value


def gpu_memory(name: str) -> float:
    """A GPU's memory in MiB, by name (rtx4090, a100-80gb, ...)."""
    key = re.sub(r"[\s_]", "", name.lower()).removeprefix("nvidia").removeprefix("geforce")
    if key not in GPUS:
        from lowtune.errors import did_you_mean

        raise LowtuneError(f"--gpu {name}: unknown GPU{did_you_mean(key, GPUS)}; give --gpu-memory 8GiB instead")
    return GPUS[key] * 1024
