"""One module per training method. `train(recipe)` runs the method named by the recipe.

Each method module has `run(recipe, run_dir) -> summary dict`; what they share (TRL argument
defaults, timing, peak memory, held-out evaluation) lives here, once.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from lowtune import dist, evaluate, models, ui
from lowtune.config import Recipe, train_config_class
from lowtune.errors import LowtuneError, TrainingStopped, did_you_mean
from lowtune.guard import Guard
from lowtune.runs import RunDir, peak_memory_mb

METHODS = {
    "sft": "lowtune.recipes.sft",
    "grpo": "lowtune.recipes.grpo",
    "reward": "lowtune.recipes.reward",
    "dpo": "lowtune.recipes.dpo",
    "ppo": "lowtune.recipes.ppo",
}
SHIPPED = [
    Path(__file__).resolve().parent.parent / "shipped_recipes",  # inside an installed wheel
    Path(__file__).resolve().parent.parent.parent / "recipes",  # a source checkout
]


def shipped_recipes() -> dict[str, Path]:
    """Name (e.g. `sft`, `gpu/sft-qwen2.5-1.5b`) -> path of each YAML recipe that ships with lowtune."""
    for root in SHIPPED:
        if root.is_dir():
            found = sorted(p for p in root.rglob("*.yaml") if p.parent.name != "accelerate")  # launch configs
            return {str(p.relative_to(root).with_suffix("")): p for p in found}
    return {}


def find_recipe(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise LowtuneError(
        f"recipe {name_or_path} is neither a file nor a shipped recipe{did_you_mean(name_or_path, shipped)}"
    )


def train(recipe: Recipe, resume: Path | None = None) -> tuple[RunDir, dict[str, Any]]:
    """Create the run directory (or reopen `resume` at its last checkpoint), run the method, write
    summary.json; returns (run, summary)."""
    from transformers import set_seed

    module = importlib.import_module(METHODS[recipe.method])
    models.resolve_path(recipe.model.name, ui.say)  # a model that is not there stops the run before its directory
    set_seed(recipe.data.seed)  # the LoRA init too: the same recipe gives the same run
    if resume is None:  # several processes: the main one makes the directory, all write into it
        made = RunDir.create(recipe) if dist.is_main() else None
        run = RunDir(Path(dist.broadcast(str(made.path) if made else None)))
        run.created = made is not None
        ui.say(f"run directory {run.path}" + (f" ({dist.world_size()} processes)" if dist.distributed() else ""))
    else:
        run = RunDir.reopen(Path(resume), write=dist.is_main())
        ui.say(f"resuming {run.path} from {run.resume_from}")
    try:
        summary = module.run(recipe, run)
    except BaseException:
        # A run that fails for any reason before its first save (bad data, a model that does not load,
        # Ctrl-C, a bug) leaves no half-made directory behind, so the next run gets its name; once a
        # checkpoint or the adapter is saved everything is kept, and a resumed run's directory always is.
        if dist.is_main() and run.remove_if_unsaved():
            ui.say(f"removed {run.path}: the run stopped before saving anything")
        raise
    summary = {**summary, "processes": dist.world_size()}
    if dist.is_main():
        run.write_summary(summary)
    return run, summary


def latest_run(recipe: Recipe) -> Path:
    """The newest run directory of this recipe's name (name, name-2, ...) that has a checkpoint."""
    parent, name = Path(recipe.output.dir), recipe.output.name or recipe.method
    candidates = [p for p in parent.glob(f"{name}*") if p.name == name or p.name.removeprefix(name + "-").isdigit()]
    candidates = [p for p in candidates if RunDir(p).last_checkpoint()]
    if not candidates:
        raise LowtuneError(f"--resume: no run of {name} under {parent} has a checkpoint to resume from")
    return max(candidates, key=lambda p: int(p.name.removeprefix(name + "-")) if p.name != name else 1)


# lowtune's defaults for every TRL trainer (the recipe's `train` section overrides them).
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


def train_defaults(method: str) -> dict[str, Any]:
    """lowtune's and the method module's defaults for `train` fields (device-dependent ones aside)."""
    return {**TRAIN_DEFAULTS, **importlib.import_module(METHODS[method]).TRAIN_DEFAULTS}


def trl_args(recipe: Recipe, run: RunDir):
    """TRL config for the method: lowtune's defaults, then the method's, then the recipe's `train`."""
    device = models.resolve_device(recipe.model)
    dtype = models.resolve_dtype(recipe.model, device)
    defaults = dict(
        output_dir=str(run.checkpoints),
        use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16 and models.resolve_quantization(recipe.model, device) == "none",
        gradient_checkpointing=models.resolve_gradient_checkpointing(recipe.model, device),
        seed=recipe.data.seed,
    )
    try:
        return train_config_class(recipe.method)(**{**defaults, **train_defaults(recipe.method), **recipe.train})
    except ValueError as e:  # the config class's own checks (e.g. incompatible settings)
        raise LowtuneError(f"train: {e}") from None


class Clock(TrainerCallback):
    """Training time with periodic evaluations left out: runs `evaluate` every `every_s` seconds of
    it (recipe `eval.every_minutes`) and stops the run once `budget_s` are spent (`budget.minutes`)."""

    def __init__(self, evaluate: Callable[[], dict | None] | None, every_s: float | None, budget_s: float | None, run):
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
                self.curve.append({**point, "accuracy": result["accuracy"]})
                self.run.log({**point, "eval_accuracy": result["accuracy"]})
        return control


def fit(trainer, run: RunDir, recipe: Recipe, evaluate: Callable[[], dict | None] | None = None) -> dict[str, Any]:
    """Train with a progress bar and metrics.jsonl; return timing, throughput and memory figures.

    `evaluate` (the held-out score of the model being trained) runs every `eval.every_minutes`.
    """
    from transformers.trainer_callback import PrinterCallback

    device = models.resolve_device(recipe.model)
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
    seconds = time.perf_counter() - start - clock.paused  # training time, periodic evaluations left out
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
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    # PEFT adapter + tokenizer, loadable without lowtune; written beside and renamed into place, so a
    # crash mid-save never leaves a half-written adapter/ (the checkpoints stay as they were). The staging
    # names are fixed, in the run's own directory, so that the next save clears what a crash left there;
    # anything at them or at adapter/ that lowtune did not make is left as it is and the save refused.
    staging, previous = run.path / ".adapter.partial", run.path / ".adapter.previous"
    _refuse_foreign(run, [staging, previous])
    if dist.is_main():
        shutil.rmtree(staging, ignore_errors=True)
    dist.barrier()
    trainer.save_model(str(staging))
    _refuse_foreign(run, [run.adapter], staged=staging)
    if dist.is_main() and run.adapter.exists():  # a finished run resumed for more steps: its old adapter gives way
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(run.adapter, previous)
    if dist.is_main():  # trainer.save_model writes on the main process only
        os.replace(staging, run.adapter)
        shutil.rmtree(previous, ignore_errors=True)
    dist.barrier()
    return {
        "wall_time_s": round(seconds, 2),
        "steps": state.global_step,
        "s_per_step": round(seconds / max(state.global_step, 1), 3),
        "tokens": int(state.num_input_tokens_seen),
        "tokens_per_s": round(state.num_input_tokens_seen / seconds, 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "device": device.type,
        "quantization": models.resolve_quantization(recipe.model, device),
        "eval_time_s": round(clock.paused, 2),
        "eval_during": clock.curve,
        "stopped_by_budget": clock.out_of_budget,
    }


def _refuse_foreign(run: RunDir, paths: list[Path], staged: Path | None = None) -> None:
    """Stop, on every process, if one of `paths` holds something lowtune did not make there: the staging
    names only ever hold plain directories, adapter/ a directory with adapter_config.json (an older save)."""
    found = None
    if dist.is_main():
        for path in paths:
            ours = path.is_dir() and not path.is_symlink()
            if path == run.adapter:
                ours = ours and (path / "adapter_config.json").is_file()
            if os.path.lexists(path) and not ours:
                found = str(path)
                break
    found = dist.broadcast(found)
    if found:
        where = f"the trained adapter is in {staged}" if staged else "the adapter was not saved"
        raise LowtuneError(
            f"{found} is not lowtune's (it appeared in the run directory during training); it was left as it is "
            f"and {where}. Move it away and continue with `lowtune train --resume {run.path}`"
        )


def heldout_accuracy(model, tokenizer, recipe: Recipe, before: bool = False) -> dict[str, Any] | None:
    """Greedy accuracy on the recipe's held-out task, or None when `eval.task` is null (or, for the
    score `before` training, when `eval.before` is off)."""
    cfg = recipe.eval
    if cfg.task is None or (before and not cfg.before) or not dist.is_main():  # several processes: the main one
        return None
    from lowtune.tools import load_tool

    common = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, system_prompt=recipe.system_prompt(),
                  tools=[load_tool(t) for t in cfg.tools])  # fmt: skip
    digits = cfg.digits or recipe.data.digits
    if cfg.task == "arithmetic":
        result = evaluate.arithmetic_accuracy(model, tokenizer, n=cfg.n, digits=digits,
                                              operations=cfg.operations or recipe.data.operations,
                                              operands=cfg.operands or recipe.data.operands, **common)  # fmt: skip
    elif cfg.task == "word_problems":
        result = evaluate.word_problem_accuracy(model, tokenizer, n=cfg.n, digits=digits, **common)
    else:
        raise LowtuneError(f"eval.task {cfg.task!r} is unknown; use arithmetic, word_problems or null")
    out = {"task": cfg.task, "n": result.n, "accuracy": result.accuracy, "example": result.examples[0][1]}
    if cfg.tools:
        out |= {"tools": cfg.tools, "replies_with_a_call": result.replies_with_a_call}
    return out


class _TokenLogprobsForTRL:
    """Stands in for TRL 1.16's ChunkedLogProbFunction (same `apply` signature and 5 outputs).

    lowtune's `token_logprobs` computes log_probs and entropy; any other output TRL asks for
    (DPO's mean_logits, is_top1, ...) goes to TRL's own function.
    """

    trl_function = None

    @classmethod
    def apply(cls, hidden, weight, bias, labels, temperature, chunk_size, softcap, logit_scale, outputs):
        if not set(outputs) <= {"log_probs", "entropy"}:
            return cls.trl_function.apply(
                hidden, weight, bias, labels, temperature, chunk_size, softcap, logit_scale, outputs
            )
        from lowtune.kernels import token_logprobs

        entropy = "entropy" in outputs
        out = token_logprobs(
            hidden, weight, labels, bias=bias, temperature=temperature, softcap=softcap,
            logit_scale=1.0 if logit_scale is None else logit_scale, return_entropy=entropy,
        )  # fmt: skip
        logp, ent = out if entropy else (out, None)
        return logp, ent, None, None, None


def resolve_logprob_kernel(choice: str, device_type: str) -> str:
    """`model.logprob_kernel` as used on `device_type`: "lowtune" or "trl".

    auto is lowtune's on CPU, where benchmarks/results/logprobs.md measured it ahead of TRL's chunked function,
    and TRL's own elsewhere, where the two have not been measured. lowtune's kernel runs its PyTorch path on
    every device (`token_logprobs`' default backend), so nothing here reaches the Triton kernels.
    """
    if choice == "auto":
        return "lowtune" if device_type == "cpu" else "trl"
    return choice


@contextlib.contextmanager
def logprob_kernel(recipe: Recipe):
    """While active, TRL's fused LM head computes per-token log-probs with lowtune's kernel (per the recipe)."""
    choice = resolve_logprob_kernel(recipe.model.logprob_kernel, models.resolve_device(recipe.model).type)
    if choice == "trl":
        yield "trl"
        return
    import trl.trainer.utils as trl_utils

    original = trl_utils._ChunkedLogProbFunction
    _TokenLogprobsForTRL.trl_function = original
    trl_utils._ChunkedLogProbFunction = _TokenLogprobsForTRL
    try:
        yield "lowtune"
    finally:
        trl_utils._ChunkedLogProbFunction = original
