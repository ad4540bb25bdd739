"""`lowtune plan`: a recipe's peak memory before the run, from one training step of the recipe's own TRL
trainer traced on fake tensors (no GPU, no weights, nothing allocated), and `--fit`: the settings that fit.

How: the model is built from its config with every weight a fake tensor (NF4 layers as bitsandbytes stores
them, `trace.PlannedNF4Linear`); the method module builds its trainer on it, as `lowtune train` does; the
worst batch the sampler can form comes from the recipe's real rows (the longest, after the trainer's own
tokenization and `max_length`); one step runs (forward, backward, optimizer) under `trace.PeakTracker`, with
the optimizer states made first so the step is a steady one. GRPO's generation is traced apart (prefill and
decode steps with the KV cache, extrapolated to the full completion length, which grows it linearly) and the
trainer's step then gets completions of the full length. Rejection sampling's sampling is traced the same way
(without the optimizer, made after it), and its SFT step on the longest prompt with a reply of the full sample
length. What tracing cannot see is added from formulas with their sources (`budget.py`): the CUDA context and the
allocator's reserve (on CPU: the process itself). A pipeline is planned stage by stage; its peak is the largest.

`fit(recipe, memory)` searches the settings: the largest per-device batch whose plan fits, keeping the
effective batch (per-device batch × gradient accumulation) and so GRPO's groups, gradient checkpointing only
where needed (rejection sampling first samples fewer prompts at once); when nothing fits it names the smallest
change that would, with its plan. A pipeline's stages are fitted in turn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lowtune import data, models
from lowtune.config import Recipe
from lowtune.errors import LowtuneError
from lowtune.placement import Placement, resolve_dtype, resolve_logprob_kernel
from lowtune.plan import budget
from lowtune.plan.trace import (
    CUDA_BLOCK,
    PeakTracker,
    as_on_cuda,
    fake_mode,
    materialize,
    meta_model,
    no_device_moves,
)

METHODS = ("sft", "dpo", "grpo", "reward", "ppo", "kto", "orpo", "rloo", "rejection_sampling")
MB = 2**20


@dataclasses.dataclass
class Part:
    name: str
    mb: float
    how: str  # traced, or the formula's source


@dataclasses.dataclass
class Plan:
    method: str
    model: str
    device: str  # cuda or cpu: where the run would compute
    batch: int  # per-device batch (GRPO: completions per step)
    length: int  # the longest sequence of the worst batch, in tokens
    rows: int
    cut_rows: int  # rows that max_length cuts
    max_length: int | None
    settings: dict[str, Any]  # the training settings the plan is for
    parts: list[Part]  # what max_memory_allocated would show, part by part
    overheads: list[Part]  # what else the device needs (CUDA context, allocator reserve)
    memory_mb: float | None = None  # the budget, when given
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def tensor_peak_mb(self) -> float:
        """The predicted peak of the tensors (torch.cuda.max_memory_allocated on CUDA)."""
        return sum(p.mb for p in self.parts)

    @property
    def total_mb(self) -> float:
        return self.tensor_peak_mb + sum(p.mb for p in self.overheads)

    @property
    def fits(self) -> bool | None:
        return None if self.memory_mb is None else self.total_mb <= self.memory_mb

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return out | {"tensor_peak_mb": round(self.tensor_peak_mb, 1), "total_mb": round(self.total_mb, 1),
                      "fits": self.fits}  # fmt: skip


@dataclasses.dataclass
class PipelinePlan:
    """A pipeline's plan: one per stage. The stages run one after another, each freeing what it held, so the
    pipeline's peak is its largest stage's."""

    model: str
    device: str
    stages: list[Plan]
    memory_mb: float | None = None
    seconds: float = 0.0
    method = "pipeline"

    @property
    def largest(self) -> Plan:
        return max(self.stages, key=lambda p: p.total_mb)

    @property
    def tensor_peak_mb(self) -> float:
        return max(p.tensor_peak_mb for p in self.stages)

    @property
    def total_mb(self) -> float:
        return self.largest.total_mb

    @property
    def fits(self) -> bool | None:
        return None if self.memory_mb is None else all(p.fits for p in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "pipeline", "model": self.model, "device": self.device, "memory_mb": self.memory_mb,
                "seconds": self.seconds, "stages": [p.to_dict() for p in self.stages],
                "tensor_peak_mb": round(self.tensor_peak_mb, 1), "total_mb": round(self.total_mb, 1),
                "fits": self.fits}  # fmt: skip


def target_placement(recipe: Recipe, device: str | None) -> Placement:
    """The placement of the planned run: this machine's (`device` None), or CUDA / CPU as if there."""
    cfg = recipe.model
    if device is None:
        return Placement.resolve(cfg)
    if device not in ("cuda", "cpu"):
        raise LowtuneError(f"--device {device}: choose cuda or cpu")
    kind = torch.device(device)
    dtype = getattr(torch, cfg.dtype) if cfg.dtype != "auto" else resolve_dtype(cfg, torch.device("cpu"))
    if cfg.dtype == "auto" and device == "cuda":
        dtype = torch.bfloat16  # GPUs from Ampere on; older ones get float16 (lowtune.placement.resolve_dtype)
    quantization = cfg.quantization if cfg.quantization != "auto" else ("nf4" if device == "cuda" else "none")
    checkpointing = cfg.gradient_checkpointing
    checkpointing = device == "cuda" if checkpointing == "auto" else bool(checkpointing)
    return Placement(kind, dtype, quantization, checkpointing, resolve_logprob_kernel(cfg.logprob_kernel, device))


def plan(recipe: Recipe, device: str | None = None, memory_mb: float | None = None, say=None) -> Plan | PipelinePlan:
    """Predict the peak memory of one training step of `recipe` on `device` (default: this machine's); a
    pipeline's, of each stage."""
    from transformers import AutoConfig

    from lowtune import recipes, training
    from lowtune.kernels.trl import patched
    from lowtune.runs import RunDir

    if recipe.stages:
        return _plan_pipeline(recipe, device, memory_mb, say)
    if recipe.method not in METHODS:
        raise LowtuneError(f"lowtune plan: {recipe.method} is not planned yet; it plans {', '.join(METHODS)} "
                           "and pipelines of them")  # fmt: skip
    began = time.perf_counter()
    placement = target_placement(recipe, device)
    path = models.resolve_path(recipe.model.name, say)
    config = AutoConfig.from_pretrained(path, trust_remote_code=recipe.model.trust_remote_code)
    tokenizer = models.load_tokenizer(path, recipe.model.trust_remote_code)
    # The trace runs on CPU fake tensors; the trainer is told so, with the planned dtype.
    traced = dataclasses.replace(placement, device=torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        args = training.trl_args(recipe, RunDir(Path(tmp)), traced, recipes.METHODS[recipe.method].TRAIN_DEFAULTS)
    args.bf16 = placement.dtype == torch.bfloat16  # as on the planned device (CPU autocast stands in for CUDA's)
    method = _METHODS[recipe.method]
    rows = method.rows(recipe)
    head = "score" if recipe.method == "reward" else "lm"
    lora = models.peft_config(recipe.lora, "SEQ_CLS" if head == "score" else "CAUSAL_LM")
    model = meta_model(config, placement, None if method.adapts else lora, head)
    with no_device_moves():
        trainer = method.trainer(recipe, args, model, tokenizer, rows)
    mode = fake_mode()
    materialize(trainer.model, mode)
    block = CUDA_BLOCK if placement.device.type == "cuda" else 1
    batch, length, cut = method.worst_batch(recipe, trainer, tokenizer, rows, mode)
    # as the methods run: GRPO and RLOO through training.fit_on_prompts with the placement's kernel
    kernel = placement.logprob_kernel if recipe.method in ("grpo", "rloo") else "trl"
    on_cuda = as_on_cuda() if placement.device.type == "cuda" else contextlib.nullcontext()
    with patched(kernel), _quiet("trl"), on_cuda:
        parts, extra = _trace_step(trainer, mode, batch, block, method)
    notes = []
    if recipe.method == "sft" and recipe.augment.tools:
        notes.append("Toolformer augmentation is not planned: annotated rows are longer than the rows planned")
    if recipe.method == "rejection_sampling":
        full = trainer.planned_sampling["full_length"]
        notes.append(f"rejection sampling: SFT planned on kept samples of train.max_completion_length="
                     f"{args.max_completion_length} tokens, the longest a sample can be ({full} tokens with the "
                     "prompt)" + (f"; train.max_length={args.max_length} cuts such a sample"
                                  if args.max_length is not None and full > args.max_length else ""))  # fmt: skip
    overheads = budget.overheads(placement.device.type, sum(p.mb for p in parts))
    settings = {
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "gradient_checkpointing": placement.gradient_checkpointing,
        "quantization": placement.quantization,
        "dtype": str(placement.dtype).removeprefix("torch."),
        "lora_r": recipe.lora.r,
        **extra,
    }
    return Plan(
        method=recipe.method, model=recipe.model.name, device=placement.device.type,
        batch=args.per_device_train_batch_size, length=length, rows=len(getattr(rows, "train", rows)),
        cut_rows=cut, max_length=getattr(args, "max_length", None), settings=settings, parts=parts,
        overheads=overheads, memory_mb=memory_mb, seconds=round(time.perf_counter() - began, 1), notes=notes,
    )  # fmt: skip


def stage_recipe(recipe: Recipe, number: int) -> Recipe:
    """Stage `number` (from 1) of a pipeline as it trains: its own sections over the pipeline's model and LoRA (a
    later stage continues the same adapter, or a fresh one of the same shape on the merged base: the same plan)."""
    from lowtune.recipes.pipeline import stage_recipe_of

    return stage_recipe_of(recipe, recipe.stages[number - 1], recipe.model.name, None)


def _plan_pipeline(recipe: Recipe, device: str | None, memory_mb: float | None, say) -> PipelinePlan:
    """Each stage's plan, in order; an error inside a stage names the stage."""
    unplanned = sorted({s.method for s in recipe.stages} - set(METHODS))
    if unplanned:
        raise LowtuneError(f"lowtune plan: the pipeline's {', '.join(unplanned)} stages are not planned yet; it plans "
                           f"{', '.join(METHODS)}")  # fmt: skip
    began, stages = time.perf_counter(), []
    for n, stage in enumerate(recipe.stages, 1):
        try:
            stages.append(plan(stage_recipe(recipe, n), device, memory_mb, say))
        except LowtuneError as e:
            raise LowtuneError(f"stage {n} ({stage.method}): {e}") from e
    return PipelinePlan(recipe.model.name, stages[0].device, stages, memory_mb, round(time.perf_counter() - began, 1))


def _trace_step(trainer, mode, batch, block: int, method) -> tuple[list[Part], dict[str, Any]]:
    """One steady training step under the tracker: its peak, split into what was alive at the peak."""
    model = trainer.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    with mode:
        trainer.create_optimizer_and_scheduler(num_training_steps=max(trainer.args.max_steps, 1))
        optimizer = trainer.optimizer
        for p in trainable:  # one step with zero gradients makes the optimizer's states: a steady step follows
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    states = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    buffers = list(model.buffers())
    tracker = PeakTracker(block)
    tracker.hold([*frozen, *buffers, *trainable, *states])
    extra: dict[str, Any] = {}
    generation = None
    with mode:
        if method.generation is not None:
            generation, extra = method.generation(trainer, tracker, batch)
            if not method.generation_holds_optimizer:  # its model is freed before the optimizer is made
                generation -= tracker.bytes_of(states, set(tracker.live))
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
        with tracker:
            trainer.training_step(model, batch, None)
            grads = [p.grad for p in trainable if p.grad is not None]
            at_peak = set(tracker.at_peak)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    weights = " (NF4)" if any(t.dtype == torch.uint8 for t in buffers) else ""
    if generation is not None and generation > tracker.peak:  # generating holds more than the step
        extra["peak_phase"] = "generation"
        alive = set(tracker.live)  # after the step: the weights and optimizer states, as during generation
        groups = [[*frozen, *buffers], trainable, *([states] if method.generation_holds_optimizer else [])]
        held = [tracker.bytes_of(group, alive) for group in groups]
        names = ["base weights" + weights, "LoRA weights", "optimizer states"][: len(held)]
        parts = [Part(name, mb / MB, "traced") for name, mb in zip(names, held, strict=True)]
        kv = Part("generation: KV cache and logits", (generation - sum(held)) / MB,
                  "traced, extrapolated to the full completion length")  # fmt: skip
        return [*parts, kv], extra
    if generation is not None:
        extra["generation_peak_mb"] = round(generation / MB, 1)
    held = [tracker.bytes_of(group, at_peak) for group in ([*frozen, *buffers], trainable, grads, states)]
    return [
        Part("base weights" + weights, held[0] / MB, "traced"),
        Part("LoRA weights", held[1] / MB, "traced"),
        Part("LoRA gradients", held[2] / MB, "traced (alive at the peak)"),
        Part("optimizer states", held[3] / MB, "traced"),
        Part("activations, logits and temporaries", (tracker.peak - sum(held)) / MB, "traced (at the peak)"),
    ], extra


# ---------------------------------------------------------------- per method: rows, trainer, worst batch


def _longest(lengths: list[int], n: int) -> list[int]:
    """Indices of the `n` longest (the worst batch a sampler can form), longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return order[: max(n, 1)]


def _fake_batch(mode, batch: dict) -> dict:
    with mode:
        return {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _Method:
    """How `plan` handles a method: its rows, its trainer (the method module's own), its worst batch."""

    adapts = False  # True: TRL puts the adapter on the bare base (else it comes with one, lowtune.models.load)
    generation = None  # a function tracing the method's generation phase, if it has one
    generation_holds_optimizer = True  # the optimizer's states are alive while it generates

    @staticmethod
    def trainer(recipe, args, model, tokenizer, rows):
        """The method module's own trainer."""
        from lowtune import recipes

        return recipes.METHODS[recipe.method].make_trainer(recipe, args, model, tokenizer, rows)


class _SFT(_Method):
    @staticmethod
    def rows(recipe):
        return data.load(recipe.data, kind="sft", system_prompt=recipe.system_prompt())

    @staticmethod
    def worst_batch(recipe, trainer, tokenizer, rows, mode):
        processed = trainer.train_dataset
        lengths = [len(ids) for ids in processed["input_ids"]]
        cut = _cut_rows(trainer.args.max_length, _sft_full_lengths(rows, tokenizer))
        rows_ = [processed[i] for i in _longest(lengths, trainer.args.per_device_train_batch_size)]
        batch = trainer.data_collator(rows_)
        return _fake_batch(mode, batch), int(batch["input_ids"].shape[1]), cut


def _sft_full_lengths(rows, tokenizer) -> list[int]:
    """Tokens per row before any truncation, as the chat template renders it."""
    out = []
    for r in rows:
        if "text" in r:
            out.append(len(tokenizer(r["text"])["input_ids"]))
        else:
            prompt, completion = r["prompt"], r["completion"]
            if isinstance(prompt, str):
                out.append(len(tokenizer(prompt + completion)["input_ids"]))
            else:
                out.append(_template_length(tokenizer, prompt + completion))
    return out


def _template_length(tokenizer, messages: list[dict], generation_prompt: bool = False) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        add_generation_prompt=generation_prompt)["input_ids"]  # fmt: skip
    return len(ids)


def _cut_rows(max_length: int | None, lengths: list[int]) -> int:
    return 0 if max_length is None else sum(n > max_length for n in lengths)


def _collate_longest(trainer, lengths: list[int], mode) -> tuple[dict, int]:
    """The trainer's collated batch of its longest processed rows (by `lengths`), fake, and its width in tokens."""
    processed = trainer.train_dataset
    batch = trainer.data_collator([processed[i] for i in _longest(lengths, trainer.args.per_device_train_batch_size)])
    width = max(v.shape[-1] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() == 2)
    return _fake_batch(mode, batch), int(width)


class _DPO(_Method):
    adapts = True  # lowtune.recipes.dpo

    @staticmethod
    def rows(recipe):
        return data.load_pairs(recipe.data, recipe.system_prompt())

    @staticmethod
    def worst_batch(recipe, trainer, tokenizer, pairs, mode):
        processed = trainer.train_dataset
        triples = zip(processed["prompt_ids"], processed["chosen_ids"], processed["rejected_ids"], strict=True)
        lengths = [len(p) + max(len(c), len(r)) for p, c, r in triples]
        batch, width = _collate_longest(trainer, lengths, mode)  # the collator truncates to max_length, as in training
        return batch, width, _cut_rows(trainer.args.max_length, lengths)


class _Reward(_Method):
    @staticmethod
    def rows(recipe):
        return data.load_pairs(recipe.data, recipe.system_prompt())

    @staticmethod
    def trainer(recipe, args, model, tokenizer, pairs):
        from lowtune.recipes import reward

        return reward.make_trainer(recipe, args, model, tokenizer, pairs)[0]

    @staticmethod
    def worst_batch(recipe, trainer, tokenizer, pairs, mode):
        from lowtune.recipes import reward

        batch, width = _collate_longest(trainer, list(trainer.train_dataset["length"]), mode)
        _, cut = reward.tokenize_pairs(pairs.train, tokenizer, trainer.args.max_length)  # sequences kept by their end
        return batch, width, cut


class _KTO(_Method):
    adapts = True  # lowtune.recipes.kto

    @staticmethod
    def rows(recipe):
        return data.load_unpaired(recipe.data, recipe.system_prompt())

    @staticmethod
    def worst_batch(recipe, trainer, tokenizer, rows, mode):
        processed = trainer.train_dataset
        lengths = [len(p) + len(c) for p, c in zip(processed["prompt_ids"], processed["completion_ids"], strict=True)]
        # the collator pairs each prompt with another row's completion for the KL estimate: of the longest too
        batch, width = _collate_longest(trainer, lengths, mode)
        return batch, width, _cut_rows(trainer.args.max_length, lengths)


class _ORPO(_Method):
    @staticmethod
    def rows(recipe):
        return data.load_pairs(recipe.data, recipe.system_prompt())

    @staticmethod
    def worst_batch(recipe, trainer, tokenizer, pairs, mode):
        processed = trainer.train_dataset  # TRL's ORPO truncates as it tokenizes: a row at max_length was cut
        lengths = [max(len(c), len(r)) for c, r in zip(processed["chosen_input_ids"], processed["rejected_input_ids"],
                                                        strict=True)]  # fmt: skip
        batch, width = _collate_longest(trainer, lengths, mode)
        cut = sum(n >= trainer.args.max_length for n in lengths) if trainer.args.max_length else 0
        return batch, width, cut


class _GRPO(_Method):
    @staticmethod
    def rows(recipe):
        return data.load(recipe.data, kind="prompt", system_prompt=recipe.system_prompt())

    @staticmethod
    def trainer(recipe, args, model, tokenizer, rows):
        from lowtune import recipes

        trainer = recipes.METHODS[recipe.method].make_trainer(recipe, args, model, tokenizer, rows)
        if hasattr(trainer.args, "skip_zero_advantage"):  # GRPO: the worst step is one where every completion
            trainer.args.skip_zero_advantage = False  # has signal (lowtune.recipes.grpo)
        completion = args.max_completion_length
        filler = _filler_token(tokenizer)

        def full_length_completions(prompt_ids, *args, **kwargs):
            # the worst case: every completion runs to max_completion_length (never stops early)
            full = [[filler] * completion for _ in prompt_ids]
            return full if recipe.method == "rloo" else (full, None)  # TRL's RLOO returns the ids alone

        trainer._generate_single_turn = full_length_completions
        return trainer

    @staticmethod
    def worst_batch(recipe, trainer, tokenizer, rows, mode):
        lengths = [_template_length(tokenizer, r["prompt"], generation_prompt=True) for r in rows]
        longest = rows[_longest(lengths, 1)[0]]
        size = trainer.args.per_device_train_batch_size * trainer.args.steps_per_generation
        return [dict(longest) for _ in range(size)], max(lengths) + trainer.args.max_completion_length, 0

    @staticmethod
    def generation(trainer, tracker, batch):
        """The peak of generating the whole generation batch: a prefill of the longest prompt, then decode steps
        on the growing KV cache up to max_completion_length (`_generation`)."""
        prompt = _template_length(trainer.processing_class, batch[0]["prompt"], generation_prompt=True)
        n, completion = len(batch), trainer.args.max_completion_length
        fold = getattr(trainer.args, "folded_generation", False)  # lowtune's GRPO: the adapter folded (on CPU)
        return _generation(trainer.model, tracker, n, prompt, completion, fold), {
            "num_generations": trainer.args.num_generations,
            "generation_batch": n,
            "prompt_tokens": prompt,
            "max_completion_length": completion,
        }


def _generation(model, tracker: PeakTracker, n: int, prompt: int, new: int, fold: bool | None = False) -> int:
    """The tracker's peak (with what it already holds) over generating `new` tokens for `n` sequences after a prompt
    of `prompt` tokens, as transformers' generate runs it: a prefill, then one token a step on the growing KV cache,
    logits of the last token only. The larger of the prefill's peak and the last step's, the latter extrapolated
    linearly from the peaks of decode steps 3 and 4 (each step's is the cache so far plus that step's temporaries).
    `fold`: as `models.folded_lora` takes it, the folded weights held throughout (evaluate.generate folds: None)."""
    sub = PeakTracker(tracker.block)
    sub.current = sub.peak = tracker.current
    steps = []
    with torch.no_grad(), sub, models.folded_lora(model, fold):
        out = model(input_ids=torch.zeros(n, prompt, dtype=torch.long), use_cache=True, logits_to_keep=1)
        cache, prefill = out.past_key_values, sub.peak
        for _ in range(min(new, 4)):
            sub.peak = sub.current
            out = model(input_ids=torch.zeros(n, 1, dtype=torch.long), cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            steps.append(sub.peak)
        del out, cache
    last = steps[-1] + (steps[-1] - steps[-2]) * (new - len(steps)) if len(steps) > 1 else max(steps, default=0)
    return int(max(prefill, last))


def _filler_token(tokenizer) -> int:
    """A token that is not an end of turn (so the planned completions never stop early)."""
    specials = set(tokenizer.all_special_ids)
    return next(i for i in range(len(tokenizer)) if i not in specials)


class _PPO(_Method):
    @staticmethod
    def rows(recipe):
        if recipe.rewards.model is not None:
            raise LowtuneError("lowtune plan: PPO with a reward model (rewards.model) is not planned yet")
        return data.load(recipe.data, kind="prompt", system_prompt=recipe.system_prompt())

    @staticmethod
    def trainer(recipe, args, model, tokenizer, rows):
        from lowtune.recipes import ppo
        from lowtune.rl import ActorCritic

        policy = ActorCritic.build(model)
        trainer = ppo.make_trainer(recipe, args, policy, tokenizer, rows)
        filler = _filler_token(tokenizer)

        def full_length(input_ids, max_new_tokens, **kwargs):
            # the worst case: every response runs to max_new_tokens (never stops early)
            tail = torch.full((input_ids.shape[0], max_new_tokens), filler, dtype=input_ids.dtype)
            return torch.cat([input_ids, tail], dim=1)

        policy.peft.generate = full_length
        return trainer

    @staticmethod
    def worst_batch(recipe, trainer, tokenizer, rows, mode):
        lengths = [_template_length(tokenizer, r["prompt"], generation_prompt=True) for r in rows]
        longest = rows[_longest(lengths, 1)[0]]
        return [dict(longest) for _ in range(trainer.args.rollout_size)], max(lengths) + trainer.args.max_new_tokens, 0

    @staticmethod
    def generation(trainer, tracker, batch):
        """A rollout's generation: all `rollout_size` prompts at once (lowtune.rl.ppo), traced as for GRPO."""
        from lowtune.rl.model import POLICY

        prompt = _template_length(trainer.processing_class, batch[0]["prompt"], generation_prompt=True)
        n, new = len(batch), trainer.args.max_new_tokens
        trainer.model.activate(POLICY)
        return _generation(trainer.model.peft, tracker, n, prompt, new), {
            "rollout_size": n,
            "prompt_tokens": prompt,
            "max_new_tokens": new,
        }


class _RejectionSampling(_Method):
    """Sampling (`sampling_batch_size` prompts, `num_generations` samples each, generated together), then SFT on
    the kept samples. Those are not known before the run: the SFT step is planned on the longest prompt with a
    reply of `max_completion_length` tokens, the longest a sample can be."""

    generation_holds_optimizer = False  # lowtune.recipes.rejection_sampling frees its sampling model before SFT

    @staticmethod
    def rows(recipe):
        return data.load(recipe.data, kind="prompt", system_prompt=recipe.system_prompt())

    @staticmethod
    def trainer(recipe, args, model, tokenizer, rows):
        from datasets import Dataset

        from lowtune.recipes import sft

        lengths = [_template_length(tokenizer, r["prompt"], generation_prompt=True) for r in rows]
        longest = rows[_longest(lengths, 1)[0]]["prompt"]
        reply = [{"role": "assistant", "content": _reply_of(tokenizer, args.max_completion_length)}]
        full = _template_length(tokenizer, [*longest, *reply])
        n = args.per_device_train_batch_size
        if args.packing and args.max_length:  # enough rows to fill every packed block of the batch
            n *= -(-args.max_length // full)
        trainer = sft.make_trainer(recipe, args, model, tokenizer,
                                   Dataset.from_list([{"prompt": longest, "completion": reply}] * n))  # fmt: skip
        sequences = min(args.sampling_batch_size, len(rows)) * args.num_generations
        trainer.planned_sampling = {"sequences": sequences, "prompt_tokens": max(lengths), "full_length": full}
        return trainer

    @staticmethod
    def worst_batch(recipe, trainer, tokenizer, rows, mode):
        processed = trainer.train_dataset  # packed or not, the batch's rows are its first ones
        batch = trainer.data_collator(
            [processed[i] for i in range(min(len(processed), trainer.args.per_device_train_batch_size))]
        )
        return _fake_batch(mode, batch), int(batch["input_ids"].shape[1]), 0  # what it cuts is said in a note

    @staticmethod
    def generation(trainer, tracker, batch):
        s, new = trainer.planned_sampling, trainer.args.max_completion_length
        return _generation(trainer.model, tracker, s["sequences"], s["prompt_tokens"], new, None), {
            "num_generations": trainer.args.num_generations,
            "sampling_batch_size": trainer.args.sampling_batch_size,
            "sampling_batch": s["sequences"],
            "prompt_tokens": s["prompt_tokens"],
            "max_completion_length": new,
        }


def _reply_of(tokenizer, n: int) -> str:
    """A reply of `n` tokens: a word that stays one token however often it repeats, else the filler token's text."""
    for word in (" a", " the", " 1", " x"):
        if len(tokenizer(word * n, add_special_tokens=False)["input_ids"]) == n:
            return word * n
    return tokenizer.decode([_filler_token(tokenizer)] * n)


_METHODS = {"sft": _SFT, "dpo": _DPO, "grpo": _GRPO, "reward": _Reward, "ppo": _PPO, "kto": _KTO, "orpo": _ORPO,
            "rloo": _GRPO, "rejection_sampling": _RejectionSampling}  # fmt: skip


@contextlib.contextmanager
def _quiet(name: str):
    """The library's warnings about the fake values of a traced step (e.g. rewards of fake completions) are
    noise to the planner."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------- fitting a budget


@dataclasses.dataclass
class Fit:
    overrides: list[str]  # what to add to the recipe (empty: it fits as it is)
    plan: Plan | PipelinePlan  # the plan of the recipe with them
    tried: list[dict[str, Any]]  # each candidate: its settings and predicted total


def fit(path: Path | None, overrides: list[str], memory_mb: float, device: str | None = None, say=None) -> Fit:
    """The settings under which the recipe at `path` (with `overrides`) fits in `memory_mb` on `device`, as
    further overrides; see the module doc. A pipeline: each stage in turn, its settings under `stages.N.` (gradient
    checkpointing, a model setting, for every stage once one needs it: then the whole pipeline is planned again)."""
    from lowtune.config import load_recipe

    recipe = load_recipe(path, overrides)
    if not recipe.stages:
        return _fit(lambda extra: plan(load_recipe(path, [*overrides, *extra]), device, memory_mb, say), recipe, "",
                    recipe.method, memory_mb)  # fmt: skip
    chosen: list[str] = []
    tried: list[dict[str, Any]] = []
    plans: list[Plan] = []
    began = time.perf_counter()
    for n in range(1, len(recipe.stages) + 1):

        def planned(extra, n=n, settled=tuple(chosen)):
            return plan(stage_recipe(load_recipe(path, [*overrides, *settled, *extra]), n), device, memory_mb, say)

        stage = stage_recipe(load_recipe(path, [*overrides, *chosen]), n)
        found = _fit(planned, stage, f"stages.{n}.", f"stage {n} ({stage.method})", memory_mb)
        chosen += found.overrides
        tried += [{"stage": n, **t} for t in found.tried]
        plans.append(found.plan)
    if any(o.startswith("model.") for o in chosen):  # a stage turned checkpointing on for the stages before it too
        return Fit(chosen, plan(load_recipe(path, [*overrides, *chosen]), device, memory_mb, say), tried)
    seconds = round(time.perf_counter() - began, 1)
    return Fit(chosen, PipelinePlan(recipe.model.name, plans[0].device, plans, memory_mb, seconds), tried)


def _fit(planned, recipe: Recipe, prefix: str, what: str, memory_mb: float) -> Fit:
    """`fit` of one recipe (a pipeline's stage: `prefix` stages.N.), `planned(extra overrides)` planning it.
    Rejection sampling whose sampling does not fit first samples fewer prompts at once (the largest number that
    fits), then its SFT step is fitted as any."""
    tried: list[dict[str, Any]] = []
    settled: list[str] = []  # settings chosen before the batch search (rejection sampling's sampling batch)

    def attempt(extra: list[str]) -> Plan:
        p = planned([*settled, *extra])
        tried.append({"overrides": [*settled, *extra], "total_mb": round(p.total_mb, 1), "fits": p.fits})
        return p

    current = attempt([])
    if current.fits:
        return Fit([], current, tried)
    if recipe.method == "rejection_sampling" and not _sampling_fits(current, memory_mb):
        k, most = current.settings["num_generations"], current.settings["sampling_batch_size"]
        found = _largest_fitting(list(range(most, 0, -1)), lambda b: [f"{prefix}train.sampling_batch_size={b}"],
                                 attempt, lambda p: _sampling_fits(p, memory_mb))  # fmt: skip
        if found is None:
            raise LowtuneError(
                f"{what}: sampling {k} replies to one prompt does not fit in {memory_mb / 1024:.2f} GiB (planned "
                f"{current.total_mb / 1024:.2f} GiB with {most} prompts at once): lower {prefix}train.num_generations "
                f"or {prefix}train.max_completion_length. Nothing was changed."
            )
        current, settled = found
        if current.fits:
            return Fit(settled, current, tried)
    batch = current.settings["per_device_train_batch_size"]
    effective = batch * current.settings["gradient_accumulation_steps"]
    sizes = [b for b in range(batch, 0, -1) if effective % b == 0]  # b × (effective / b): the same effective batch
    generations = current.settings.get("num_generations")
    per_generation = recipe.train.get("steps_per_generation")
    if generations and per_generation:  # GRPO generates b × steps_per_generation completions in whole groups
        sizes = [b for b in sizes if b * per_generation % generations == 0]
    gc_now = current.settings["gradient_checkpointing"]
    for gc in [gc_now] if gc_now else [False, True]:  # checkpointing only where needed

        def settings(b, gc=gc):
            out = [f"{prefix}train.per_device_train_batch_size={b}",
                   f"{prefix}train.gradient_accumulation_steps={effective // b}"]  # fmt: skip
            return out + ([] if gc == gc_now else [f"model.gradient_checkpointing={str(gc).lower()}"])

        chosen = _largest_fitting(sizes, settings, attempt)
        if chosen is not None:
            return Fit([*settled, *chosen[1]], chosen[0], tried)
    raise LowtuneError(_nothing_fits(recipe, current, memory_mb, effective, attempt, prefix, what))


def _sampling_fits(p: Plan, memory_mb: float) -> bool:
    """Whether a plan's generation phase alone (with what the device needs besides) fits."""
    tensors = p.tensor_peak_mb if p.settings.get("peak_phase") == "generation" else p.settings["generation_peak_mb"]
    return tensors + sum(o.mb for o in budget.overheads(p.device, tensors)) <= memory_mb


def _largest_fitting(sizes: list[int], settings, attempt, fits=lambda p: p.fits) -> tuple[Plan, list[str]] | None:
    """Binary search over `sizes` (descending) for the largest whose plan fits: memory grows with the batch."""
    lo, hi, best = 0, len(sizes) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        extra = settings(sizes[mid])
        p = attempt(extra)
        if fits(p):
            best, hi = (p, extra), mid - 1
        else:
            lo = mid + 1
    return best


def _nothing_fits(
    recipe: Recipe, current: Plan, memory_mb: float, effective: int, attempt, prefix: str, what: str
) -> str:
    """The one-line error when no batch fits: the smallest single changes that would, each with its plan."""
    smallest = [f"{prefix}train.per_device_train_batch_size=1", f"{prefix}train.gradient_accumulation_steps="
                f"{effective}", "model.gradient_checkpointing=true"]  # fmt: skip
    changes = []
    if current.max_length and current.length > 64:
        changes.append(("max_length halved", [f"{prefix}train.max_length={current.max_length // 2}"]))
    if current.settings["quantization"] != "nf4":
        changes.append(("NF4 (QLoRA)", ["model.quantization=nf4"]))
    if recipe.lora.r > 4:
        changes.append((f"LoRA rank {recipe.lora.r // 2}", [f"lora.r={recipe.lora.r // 2}"]))
    found = []
    for change, extra in changes:
        p = attempt([*smallest, *extra])
        found.append(
            f"{change} ({' '.join(extra)}): {p.total_mb / 1024:.2f} GiB" + ("" if p.fits else ", still too much")
        )
    best = f" Single changes, each with batch 1 and checkpointing: {'; '.join(found)}." if found else ""
    return (
        f"{what} does not fit in {memory_mb / 1024:.2f} GiB even with a per-device batch of 1 and gradient "
        f"checkpointing (planned {current.total_mb / 1024:.2f} GiB as it is).{best} Nothing was changed."
    )
