"""Tracing a training step's memory on fake tensors: shapes and dtypes without data or allocation.

`PeakTracker` is a dispatch mode that adds up the bytes of every storage an operation creates and takes them
off when the storage is freed, so its peak is the tensor peak of what ran under it; on real tensors it
measures a real run the same way (benchmarks/plan_accuracy.py compares the two). `fake_model` builds the
recipe's model (NF4 layers included) from its config alone on the meta device, and `materialize` makes every
weight a fake tensor once the trainer is built.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# The CUDA caching allocator hands out blocks in multiples of 512 bytes (c10/cuda/CUDACachingAllocator.cpp,
# kMinBlockSize), and torch.cuda.max_memory_allocated counts the blocks.
CUDA_BLOCK = 512


class PeakTracker(TorchDispatchMode):
    """The tensor bytes alive, and their peak, over what runs inside (start with `hold` for what exists)."""

    def __init__(self, block: int = 1, fake: bool = True):
        super().__init__()
        self.block, self.fake = block, fake  # fake: values without data (.item(), masks) get planned ones
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.current = 0
        self.peak = 0
        self.at_peak: set[int] = set()  # the storages alive at the peak (for telling its parts apart)

    def size(self, nbytes: int) -> int:
        return -(-nbytes // self.block) * self.block

    def hold(self, tensors) -> int:
        """Count tensors that already exist (weights, optimizer states); returns the bytes they add."""
        before = self.current
        for t in tensors:
            self._add(t)
        return self.current - before

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.live and self.live[key][0]() is storage:
            return
        n = self.size(storage.nbytes())

        def freed(_, key=key, n=n):
            if self.live.pop(key, None) is not None:
                self.current -= n

        self.live[key] = (weakref.ref(storage, freed), n)
        self.current += n
        if self.current > self.peak:
            self.peak = self.current
            self.at_peak = set(self.live)

    def bytes_of(self, tensors, among: set[int]) -> int:
        """Bytes of those of `tensors` whose storage is in `among` (e.g. alive at the peak)."""
        seen = {}
        for t in tensors:
            key = id(t.untyped_storage())
            if key in among and key in self.live:
                seen[key] = self.live[key][1]
        return sum(seen.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        fake = self.fake and any(isinstance(a, FakeTensor) for a in tree_leaves(args))
        if fake and func is torch.ops.aten._local_scalar_dense.default:
            # .item() on a fake tensor has no value: a flag is False (checks for bad input pass), a number 1
            constant = getattr(args[0], "constant", None)  # a fake tensor made from a Python number keeps it
            if constant is not None:
                return constant.item()
            return {torch.bool: False}.get(args[0].dtype, 1.0 if args[0].dtype.is_floating_point else 1)
        out = _masked(func, args) if fake else None
        if out is None:
            out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


_BOOL = (torch.bool, torch.uint8)


def _masked(func, args):
    """What an operation selecting by a mask gives, planned for a mask that selects everything: without data
    the selection has no size (x[mask], mask.nonzero(), x[mask] = y). None for any other operation."""
    aten = torch.ops.aten
    if func is aten.nonzero.default:
        t = args[0]
        return torch.empty((t.numel(), t.dim()), dtype=torch.long, device=t.device)
    if func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
        x, indices = args[0], args[1]
        masks = [i for i in indices if i is not None and i.dtype in _BOOL]
        if not masks:
            return None
        if func is aten.index_put_.default:
            return x  # in place: nothing new
        if func is aten.index_put.default:
            return torch.empty_like(x)
        if len(indices) != 1:
            raise NotImplementedError("lowtune plan: indexing with a mask and other indices together")
        mask = masks[0]
        return x.new_empty((mask.numel(), *x.shape[mask.dim() :]))
    if func is aten.masked_select.default:
        return args[0].new_empty((torch.broadcast_shapes(args[0].shape, args[1].shape).numel(),))
    return None


def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


class _NF4Matmul(torch.autograd.Function):
    """bitsandbytes' MatMul4Bit, as far as memory goes: the forward writes only its output (a fused 4-bit
    GEMM), the backward dequantizes the weight to the compute dtype for the input's gradient
    (bitsandbytes/autograd/_functions.py)."""

    @staticmethod
    def forward(ctx, x, out_features, in_features, bias):
        ctx.shape = (out_features, in_features)
        out = x.new_empty(*x.shape[:-1], out_features)
        return out if bias is None else out + bias

    @staticmethod
    def backward(ctx, grad):
        weight = grad.new_empty(ctx.shape)
        return grad @ weight, None, None, None


class PlannedNF4Linear(torch.nn.Linear):
    """A bitsandbytes Linear4bit's memory on fake tensors: packed 4-bit weights (two per byte, stored in
    `quant_storage`), one absmax byte per 64 weights with double quantization (an fp32 absmax per 256 of
    those), and the quantization state's code books and offset (bitsandbytes.functional.quantize_4bit).
    A Linear to PEFT, which puts its LoRA layer around it as around bitsandbytes' layer."""

    def __init__(self, out_features: int, in_features: int, bias: bool, storage: torch.dtype):
        torch.nn.Module.__init__(self)  # not Linear's: no full-size weight
        self.out_features, self.in_features = out_features, in_features
        n = out_features * in_features
        self.register_buffer("packed", torch.empty((n + 1) // 2 // storage.itemsize, dtype=storage))
        blocks = -(-n // 64)
        self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8))
        self.register_buffer("absmax2", torch.empty(-(-blocks // 256), dtype=torch.float32))
        self.register_buffer("code", torch.empty(16, dtype=torch.float32))  # the 16 NF4 levels
        self.register_buffer("code2", torch.empty(256, dtype=torch.float32))  # the absmax bytes' 8-bit map
        self.register_buffer("offset", torch.empty((), dtype=torch.float32))  # the absmax mean
        # bitsandbytes computes (and keeps the bias) in the compute dtype, which lowtune stores the weights in too
        self.bias = torch.nn.Parameter(torch.empty(out_features, dtype=storage), requires_grad=False) if bias else None
        self.weight = self.packed  # PEFT and TRL look for base_layer.weight (its dtype, its device)

    def forward(self, x):
        return _NF4Matmul.apply(x, self.out_features, self.in_features, self.bias)


def meta_model(config, placement, lora=None, head: str = "lm"):
    """`config`'s architecture on the meta device (shapes only) in `placement`'s dtype and quantization (NF4
    layers as `PlannedNF4Linear`), with a fresh LoRA adapter per `lora` (a PEFT LoraConfig) as
    lowtune.models.load makes it. Trainers are built on it; `materialize` then makes every tensor fake."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if head == "score" else AutoModelForCausalLM
    if head == "score":
        config.num_labels = 1
    with torch.device("meta"):
        model = auto.from_config(config, dtype=placement.dtype)
        if placement.quantization == "nf4":  # the base's linear layers, as bitsandbytes stores them
            for name, module in list(model.named_modules()):
                if type(module) is torch.nn.Linear and name.rsplit(".", 1)[-1] not in ("lm_head", "score"):
                    bias = module.bias is not None
                    model.set_submodule(name, PlannedNF4Linear(module.out_features, module.in_features, bias,
                                                               placement.dtype))  # fmt: skip
    if placement.quantization == "nf4":
        model.is_loaded_in_4bit = True  # as transformers marks a bitsandbytes model (PEFT and TRL read it)
        for param in model.parameters():  # lowtune.models.prepare_quantized
            param.requires_grad_(False)
        if placement.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    if lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, lora)
    return model


def materialize(model, mode) -> None:
    """Every meta parameter and buffer of `model` becomes a fake tensor of its shape and dtype (tied weights
    stay one tensor)."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for kind in ("_parameters", "_buffers"):
            for name, t in list(getattr(module, kind).items()):
                if t is None or not t.is_meta:
                    continue
                if id(t) not in memo:
                    with mode:
                        fake = torch.empty(t.shape, dtype=t.dtype)
                    memo[id(t)] = (
                        torch.nn.Parameter(fake, requires_grad=t.requires_grad) if kind == "_parameters" else fake
                    )
                getattr(module, kind)[name] = memo[id(t)]
        if isinstance(module, PlannedNF4Linear):
            module.weight = module.packed


@contextlib.contextmanager
def no_device_moves() -> Iterator[None]:
    """Trainers move their model to the device when they are built; fake weights stay where they are. And a
    trainer that copies weights when it is built (TRL's RLOO copies a PEFT model's adapter into a frozen `ref`
    adapter) copies nothing from a meta tensor: the plan needs the copy's shape, which it has, not its values."""
    from transformers import Trainer

    original, copy_ = Trainer._move_model_to_device, torch.Tensor.copy_

    def copy_values(self, src, *args, **kwargs):
        return self if isinstance(src, torch.Tensor) and src.is_meta else copy_(self, src, *args, **kwargs)

    Trainer._move_model_to_device = lambda self, model, device: None
    torch.Tensor.copy_ = copy_values
    try:
        yield
    finally:
        Trainer._move_model_to_device = original
        torch.Tensor.copy_ = copy_


def tensor_peak_callback(steps: int = 3):
    """A TrainerCallback that measures the tensor peak of the first `steps` training steps on real tensors with
    the same tracker (the weights and buffers held from the start, the optimizer states counted as they are
    made): what a plan predicts, measured. The result, in bytes, is in `.peak` after those steps."""
    from transformers import TrainerCallback

    class TensorPeak(TrainerCallback):
        def __init__(self):
            self.peak: int | None = None
            self.tracker: PeakTracker | None = None

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 0 and self.tracker is None:
                self.tracker = PeakTracker(fake=False)
                self.tracker.hold([*model.parameters(), *model.buffers()])
                self.tracker.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.tracker is not None and state.global_step >= steps:
                self.tracker.__exit__(None, None, None)
                self.peak, self.tracker = self.tracker.peak, None

    return TensorPeak()


class _InPlaceKernel:
    """A Triton kernel as memory sees it: launched as kernel[grid](...), it writes into buffers it is given."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def as_on_cuda() -> Iterator[None]:
    """TRL's chunked log-prob function takes its CUDA path while the step is traced on CPU fake tensors: the
    Triton kernels (which fold each logits tile in place, allocating nothing) and its in-place fp32 addmm
    (trl/kernels/chunked_logprob.py), instead of the CPU fallback that folds tiles with temporaries."""
    import trl.kernels.chunked_logprob as chunked
    import trl.trainer.utils as trl_utils

    saved = {
        (chunked, "_use_triton"): chunked._use_triton,
        (trl_utils, "_use_triton"): trl_utils._use_triton,
        (chunked, "_forward_kernel"): chunked._forward_kernel,
        (chunked, "_backward_kernel"): chunked._backward_kernel,
        (chunked, "_addmm_fp32"): chunked._addmm_fp32,
    }
    chunked._use_triton = trl_utils._use_triton = lambda device: True
    chunked._forward_kernel = chunked._backward_kernel = _InPlaceKernel()
    chunked._addmm_fp32 = lambda acc, a, b: None  # torch.addmm(acc, a, b, out_dtype=float32, out=acc) on CUDA
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)
