"""The training core every method shares: TRL's arguments, the training loop with its progress bar, clock,
budget and guards, and the figures of the run.

A method module (lowtune/recipes/*.py) gets the TRL arguments built here, loads its model and data, builds
its trainer and hands it to `fit`; `fit` trains, saves the adapter through the run directory, and returns
what it measured. The methods that sample completions of prompts and score them with the rule rewards (GRPO,
RLOO) share their whole run, `fit_on_prompts`, and differ in the trainer they build.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from lowtune import data, dist, levers, models, ui
from lowtune.config import Recipe, train_config_class
from lowtune.errors import LowtuneError, TrainingStopped
from lowtune.evaluate import heldout_accuracy, heldout_before
from lowtune.guard import Guard
from lowtune.kernels.trl import patched
from lowtune.placement import Placement
from lowtune.results import BeforeAfter, Fit, RunSummary
from lowtune.runs import RunDir, peak_memory_mb

# lowtune's defaults for every TRL trainer (the method's defaults, then the recipe's `train`, override them).
TRAIN_DEFAULTS = dict(
    report_to="none",
    disable_tqdm=True,  # lowtune draws its own progress bar
    logging_steps=5,
    save_strategy="steps",
    save_steps=50,
    save_total_limit=2,
    include_num_input_tokens_seen="non_padding",
    logging_nan_inf_filter=False,  # a NaN loss must show, and stop the run (lowtune.guard)
)


def trl_args(recipe: Recipe, run: RunDir, placement: Placement, method_defaults: dict[str, Any]):
    """TRL's config for the method: lowtune's defaults, the method's, the speed levers measured for this device,
    then the recipe's `train`.

    Built before the model loads: under DeepSpeed ZeRO-3 (recipes/accelerate/deepspeed-zero3.yaml) creating
    the arguments registers the DeepSpeed config, and transformers partitions the weights at load time only
    when it is registered then.
    """
    device = placement.device
    defaults = dict(
        output_dir=str(run.checkpoints),
        use_cpu=device.type == "cpu",
        bf16=placement.dtype == torch.bfloat16,
        fp16=placement.dtype == torch.float16 and placement.quantization == "none",
        gradient_checkpointing=placement.gradient_checkpointing,
        seed=recipe.data.seed,
    )
    # on CUDA the speed levers measured to win for the method, unless the recipe sets them; then off whatever
    # this machine cannot run, with a line saying why (lowtune.levers)
    measured = levers.defaults(recipe.method, device.type)
    settings, notes = levers.usable({**defaults, **TRAIN_DEFAULTS, **method_defaults, **measured, **recipe.train},
                                    device.type)  # fmt: skip
    for note in notes:
        ui.say(note)
    try:
        return train_config_class(recipe.method)(**settings)
    except ValueError as e:  # the config class's own checks (e.g. incompatible settings)
        raise LowtuneError(f"train: {e}") from None


def exact_eval_batches(args, heldout) -> None:
    """TRL's DPO and ORPO report eval metrics as the mean of per-batch means: equal batches make it the exact
    mean, so the eval batch becomes the largest divisor of the held-out rows up to its size."""
    if heldout is not None:
        n, size = len(heldout), args.per_device_eval_batch_size
        args.per_device_eval_batch_size = max(d for d in range(1, min(n, size) + 1) if n % d == 0)


class Clock(TrainerCallback):
    """Training time with periodic evaluations left out: runs `evaluate` every `every_s` seconds of
    it (recipe `eval.every_minutes`) and stops the run once `budget_s` are spent (`budget.minutes`)."""

    def __init__(self, evaluate: Callable[[], Any] | None, every_s: float | None, budget_s: float | None, run):
        self.evaluate, self.every_s, self.budget_s, self.run = evaluate, every_s, budget_s, run
        self.start = time.perf_counter()
        self.paused = 0.0  # seconds spent evaluating
        self.curve: list[dict[str, Any]] = []
        self.out_of_budget = False

    def training_seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.paused = time.perf_counter(), 0.0

    def on_step_end(self, args, state, control, **kwargs):
        seconds = self.training_seconds()
        # Several processes stop at the same step (the main one's clock decides), or they would deadlock.
        if self.budget_s is not None and dist.broadcast(seconds >= self.budget_s):
            self.out_of_budget = True
            control.should_training_stop = True
        elif (
            self.every_s and self.evaluate is not None and dist.is_main()
            and seconds >= self.every_s * (len(self.curve) + 1)
        ):  # fmt: skip
            began = time.perf_counter()
            result = self.evaluate()
            self.paused += time.perf_counter() - began
            if result is not None:
                point = {"step": state.global_step, "train_time_s": round(seconds, 1)}
                self.curve.append({**point, "accuracy": result.accuracy})
                self.run.log({**point, "eval_accuracy": result.accuracy})
        return control


def fit(trainer, run: RunDir, recipe: Recipe, placement: Placement, evaluate: Callable[[], Any] | None = None) -> Fit:
    """Train with a progress bar and metrics.jsonl, save the adapter; return timing, throughput and memory.

    `evaluate` (the held-out score of the model being trained, an object with `.accuracy`) runs every
    `eval.every_minutes`.
    """
    from transformers.trainer_callback import PrinterCallback

    device = placement.device
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; our bar shows them
    trainer.add_callback(ui.ProgressCallback(quiet=recipe.output.quiet))
    trainer.add_callback(run.callback())
    guard = Guard()
    trainer.add_callback(guard)
    every, budget = recipe.eval.every_minutes, recipe.budget.minutes
    clock = Clock(evaluate, every and every * 60, budget and budget * 60, run)
    trainer.add_callback(clock)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        with guard.signals():
            trainer.train(resume_from_checkpoint=run.resume_from)
    except torch.cuda.OutOfMemoryError:
        last = run.last_checkpoint()
        raise TrainingStopped(
            f"out of GPU memory at step {trainer.state.global_step}. Lower train.per_device_train_batch_size "
            f"(now {trainer.args.per_device_train_batch_size}; raise train.gradient_accumulation_steps to keep "
            f"the effective batch), lower train.max_length, set model.gradient_checkpointing=true, use "
            f"model.quantization=nf4; for GRPO lower train.num_generations or train.max_completion_length. "
            + (f"Continue with `lowtune train --resume {run.path} ...`" if last else "No checkpoint was saved yet.")
        ) from None
    seconds = time.perf_counter() - start - clock.paused
    state = trainer.state
    last = run.last_checkpoint()
    kept = f"the last checkpoint is {last}" if last else "no checkpoint was saved yet"
    if guard.bad:
        raise TrainingStopped(
            f"stopped: {guard.bad}; {kept} (nothing after it was saved). Lower train.learning_rate, "
            f"set train.max_grad_norm, or check the data; continue with `lowtune train --resume {run.path}`"
        )
    if guard.signal:
        raise TrainingStopped(
            f"{guard.signal} at step {state.global_step}: {kept}; continue with `lowtune train --resume {run.path}`",
            exit_code=130 if guard.signal == "SIGINT" else 143,
        )
    run.save_adapter(trainer)
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    return Fit(
        wall_time_s=round(seconds, 2),
        steps=state.global_step,
        s_per_step=round(seconds / max(state.global_step, 1), 3),
        tokens=int(state.num_input_tokens_seen),
        tokens_per_s=round(state.num_input_tokens_seen / seconds, 1),
        peak_memory_mb=round(peak_memory_mb(device), 1),
        trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        first_loss=losses[0] if losses else None,
        final_loss=losses[-1] if losses else None,
        device=device.type,
        quantization=placement.quantization,
        eval_time_s=round(clock.paused, 2),
        eval_during=clock.curve,
        stopped_by_budget=clock.out_of_budget,
    )


def fit_on_prompts(method: str, recipe: Recipe, run: RunDir, placement: Placement, args, make_trainer) -> RunSummary:
    """The run of a method that samples completions of the recipe's prompts from the adapted model and scores them
    with rule rewards (GRPO, RLOO): the held-out score of the starting model, the trainer
    `make_trainer(recipe, args, model, tokenizer, prompts)` (it sets `args.reward_weights`), `fit` with the
    placement's log-prob kernel inside TRL's fused LM head, the held-out score after."""
    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say, placement=placement)
    dataset = data.load(recipe.data, kind="prompt", system_prompt=recipe.system_prompt())
    ui.say(f"{len(dataset)} prompts from {recipe.data.source}")

    before = heldout_before(model, tokenizer, recipe)

    trainer = make_trainer(recipe, args, model, tokenizer, dataset)
    with patched(placement.logprob_kernel) as kernel:
        measured = fit(trainer, run, recipe, placement, lambda: heldout_accuracy(model, tokenizer, recipe))

    after = heldout_accuracy(model, tokenizer, recipe)
    weights = {f.__name__: w for f, w in zip(trainer.reward_funcs, args.reward_weights, strict=True) if w}
    details = {"logprob_kernel": kernel, "rewards": weights}
    return RunSummary(method, recipe.model.name, len(dataset), measured, details, heldout=BeforeAfter(before, after))


def bare_base(recipe: Recipe, placement: Placement, method: str, needs: str):
    """(base, tokenizer) for a preference method that hands TRL the bare base and a LoRA config (TRL puts the
    adapter on and takes the reference by switching it off). `needs`: the outputs of TRL's log-prob function
    the method's metrics use, which lowtune's kernel does not compute, so `model.logprob_kernel=lowtune` is
    refused with them named."""
    if recipe.model.logprob_kernel == "lowtune":
        raise LowtuneError(
            f"model.logprob_kernel=lowtune: {method}'s metrics need {needs}, which lowtune's kernel does not "
            f"compute; {method} uses TRL's chunked log-probs (set auto or trl)"
        )
    base, tokenizer = models.load(recipe.model, say=ui.say, placement=placement)
    return models.prepare_quantized(base, placement.gradient_checkpointing), tokenizer
