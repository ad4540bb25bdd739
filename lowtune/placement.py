"""Where and how a run computes, decided once: device, dtype, quantization, gradient checkpointing and the
per-token log-prob kernel.

`Placement.resolve(recipe.model)` turns the recipe's `auto`s into choices for this machine at the start of a
run; everything after (model loading, TRL's arguments, the kernel patch, summary.json) reads the one object.

Policy: CUDA if available, else CPU (overridable). `quantization: auto` means NF4 on CUDA and full precision
on CPU, where memory is rarely the limit and bitsandbytes' 4-bit path is slower (SmolLM2-135M SFT at 256
tokens: 1.53 s/step in NF4 vs 1.10 in fp32, benchmarks/results/throughput_cpu.md); `nf4` forces QLoRA
anywhere. Gradient checkpointing is on by default on CUDA, off on CPU. The log-prob kernel is lowtune's on
CPU, where benchmarks/results/logprobs.md measured it ahead of TRL's chunked function, and TRL's own on
CUDA, where no GPU measurement exists yet.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from lowtune import dist
from lowtune.config import ModelConfig
from lowtune.errors import LowtuneError


@dataclasses.dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype
    quantization: str  # nf4, int8 or none
    gradient_checkpointing: bool
    logprob_kernel: str  # lowtune or trl

    @classmethod
    def resolve(cls, cfg: ModelConfig) -> Placement:
        device = resolve_device(cfg)
        return cls(
            device=device,
            dtype=resolve_dtype(cfg, device),
            quantization=resolve_quantization(cfg, device),
            gradient_checkpointing=resolve_gradient_checkpointing(cfg, device),
            logprob_kernel=resolve_logprob_kernel(cfg.logprob_kernel, device.type),
        )

    def to_dict(self) -> dict[str, Any]:
        """As summary.json records it."""
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "quantization": self.quantization,
            "gradient_checkpointing": self.gradient_checkpointing,
            "logprob_kernel": self.logprob_kernel,
        }

    def describe(self) -> str:
        """One line for the console: `cpu, float32, full precision, log-probs: lowtune`."""
        d = self.to_dict()
        quantization = "full precision" if self.quantization == "none" else self.quantization
        checkpointing = ", gradient checkpointing" if self.gradient_checkpointing else ""
        return f"{d['device']}, {d['dtype']}, {quantization}{checkpointing}, log-probs: {self.logprob_kernel}"


def resolve_device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise LowtuneError("model.device is cuda but no CUDA device is visible; use model.device=auto")
    if cfg.device == "auto":
        cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
        return torch.device("cuda", dist.local_rank()) if cuda else torch.device("cpu")
    # Several processes on one machine: each its own GPU (LOCAL_RANK, set by accelerate launch / torchrun).
    return torch.device("cuda", dist.local_rank()) if cfg.device == "cuda" else torch.device(cfg.device)


def resolve_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_quantization(cfg: ModelConfig, device: torch.device) -> str:
    if cfg.quantization == "auto":
        return "nf4" if device.type == "cuda" else "none"
    return cfg.quantization


def resolve_gradient_checkpointing(cfg: ModelConfig, device: torch.device) -> bool:
    if cfg.gradient_checkpointing == "auto":
        return device.type == "cuda"
    return bool(cfg.gradient_checkpointing)


def resolve_logprob_kernel(choice: str, device_type: str) -> str:
    """`model.logprob_kernel` as used on `device_type`: "lowtune" or "trl" (auto: lowtune's on CPU only).
    lowtune's kernel runs its PyTorch path on every device (`token_logprobs`' default backend), so nothing here
    reaches the Triton kernels."""
    if choice == "auto":
        return "lowtune" if device_type == "cpu" else "trl"
    return choice
