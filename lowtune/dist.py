"""Several processes on one or more machines (`accelerate launch`, `torchrun`): who does what.

Every process runs the whole recipe; transformers' Trainer (via accelerate) splits the batches and
averages the gradients. lowtune's part is that only the main process (rank 0) creates the run
directory, writes files, prints, and scores the held-out task, and that every process takes the same
decisions (the run directory's name, when the time budget stops training). Ranks come from the
launchers' environment variables, so nothing here starts a process group by itself before a trainer
or `state()` does.
"""

from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def distributed() -> bool:
    return world_size() > 1


def sharded() -> bool:
    """Launched with FSDP or DeepSpeed ZeRO-3 (accelerate's environment): the launcher places the weights."""
    env = os.environ
    fsdp = env.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    zero3 = (
        env.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")
        and env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    )
    return fsdp or zero3


def is_main() -> bool:
    return rank() == 0


def state():
    """accelerate's process state (starts the process group: gloo on CPU, NCCL on CUDA)."""
    from accelerate import PartialState

    return PartialState()


def _group():
    import torch.distributed as torch_dist

    if not torch_dist.is_initialized():
        state()
    return torch_dist


def barrier() -> None:
    if distributed():
        _group().barrier()


def broadcast(value: Any) -> Any:
    """The main process's `value`, on every process (any picklable object)."""
    if not distributed():
        return value
    box = [value]
    _group().broadcast_object_list(box, src=0)
    return box[0]


def refuse(what: str) -> None:
    """Stop with a clear message where a loop of lowtune's own does not split work across processes."""
    from lowtune.errors import LowtuneError

    if distributed():
        raise LowtuneError(
            f"{what} runs in one process: its loop is lowtune's own and does not split work across the "
            f"{world_size()} processes of this launch. Run it without accelerate launch / torchrun "
            "(one GPU or the CPU); SFT, DPO, reward and GRPO run on several"
        )
