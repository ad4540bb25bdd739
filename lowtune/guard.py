"""Guarded training: stop on a non-finite loss or weights, and checkpoint on SIGINT/SIGTERM.

`Guard` is a transformers callback. After every optimizer step it checks the trainable weights
(the LoRA matrices: small) for NaN/inf, and every logged loss; on the first non-finite value it
stops the run *without* saving, so the last checkpoint on disk is the last good one. While
`Guard.signals()` is active, Ctrl-C or SIGTERM asks the trainer to save a checkpoint at the end of
the current step and stop; `lowtune train --resume` continues from it.
"""

from __future__ import annotations

import contextlib
import math
import signal

import torch
from transformers import TrainerCallback


class Guard(TrainerCallback):
    def __init__(self):
        self.signal: str | None = None  # "SIGINT" / "SIGTERM" once one arrived
        self.bad: str | None = None  # what went non-finite, and at which step

    @contextlib.contextmanager
    def signals(self):
        """Route SIGINT and SIGTERM to a graceful stop for the duration of training."""

        def handle(signum, frame):
            if self.signal is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self.signal = signal.Signals(signum).name

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.bad is None and model is not None:
            for name, param in model.named_parameters():
                if param.requires_grad and not torch.isfinite(param).all():
                    self.bad = f"weight {name} is not finite after step {state.global_step}"
                    break
        if self.bad is not None:
            control.should_save = False  # keep the last good checkpoint as the newest one
            control.should_training_stop = True
        elif self.signal is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if self.bad is None and isinstance(loss, float) and not math.isfinite(loss):
            self.bad = f"the training loss is {loss} at step {state.global_step}"
            control.should_save = False
            control.should_training_stop = True
        return control
