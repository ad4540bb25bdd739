"""The training methods, one module each, and the recipes that ship with lowtune.

`train(recipe)` runs the method the recipe names, or a pipeline's stages one after another (`pipeline`). Each method
module has `TRAIN_DEFAULTS` (its defaults for TRL's config) and `run(recipe, run_dir, placement, args) -> RunSummary`:
it loads its model and data, builds its TRL trainer and trains it with `lowtune.training.fit`. Rejection sampling
ends in SFT: its `run` is handed the sft method's. What they share lives in lowtune.training, lowtune.evaluate,
lowtune.runs and lowtune.placement, once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lowtune import dist, models, training, ui
from lowtune.config import Recipe
from lowtune.errors import LowtuneError, did_you_mean
from lowtune.placement import Placement
from lowtune.recipes import dpo, grpo, kto, online_dpo, orpo, pipeline, ppo, rejection_sampling, reward, rloo, sft
from lowtune.results import PipelineSummary, RunSummary
from lowtune.runs import RunDir

METHODS = {
    "sft": sft, "grpo": grpo, "reward": reward, "dpo": dpo, "ppo": ppo, "kto": kto, "rloo": rloo, "orpo": orpo,
    "online_dpo": online_dpo, "rejection_sampling": rejection_sampling,
}  # fmt: skip
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


def train_defaults(method: str) -> dict[str, Any]:
    """lowtune's and the method's defaults for `train` fields (device-dependent ones aside)."""
    return {**training.TRAIN_DEFAULTS, **METHODS[method].TRAIN_DEFAULTS}


def train(
    recipe: Recipe, resume: Path | None = None, plan: dict | None = None, smoke: bool = False
) -> tuple[RunDir, RunSummary | PipelineSummary]:
    """Create the run directory (or reopen `resume` at its last checkpoint), run the method (a pipeline: each stage
    in turn), write summary.json; returns (run, summary). `plan`: what `lowtune train --fit` planned, recorded with
    the peak measured on CUDA. `smoke`: the recipe was made a smoke run (`lowtune train --smoke`), marked in
    summary.json (a pipeline's stages' too)."""
    from transformers import set_seed

    models.resolve_path(recipe.model.name, ui.say)  # a model that is not there stops the run before its directory
    placement = Placement.resolve(recipe.model)
    set_seed(recipe.data.seed)  # the LoRA init too: the same recipe gives the same run
    if resume is None:  # several processes: the main one makes the directory, all write into it
        made = RunDir.create(recipe) if dist.is_main() else None
        run = RunDir(Path(dist.broadcast(str(made.path) if made else None)))
        run.created = made is not None
        ui.say(f"run directory {run.path}" + (f" ({dist.world_size()} processes)" if dist.distributed() else ""))
    else:
        run = RunDir.reopen(Path(resume), write=dist.is_main())
        ui.say(f"resuming {run.path}" + (f" from {run.resume_from}" if run.resume_from else ""))
    ui.say(f"placement: {placement.describe()}")

    def run_method(recipe: Recipe, run: RunDir, placement: Placement) -> RunSummary:
        # The arguments before the model: under ZeRO-3 they register the DeepSpeed config that shards the load.
        method = METHODS[recipe.method]
        args = training.trl_args(recipe, run, placement, method.TRAIN_DEFAULTS)
        if method is rejection_sampling:
            summary = rejection_sampling.run(recipe, run, placement, args, train_sft=sft.run)
        else:
            summary = method.run(recipe, run, placement, args)
        summary.placement, summary.processes, summary.smoke = placement.to_dict(), dist.world_size(), smoke
        return summary

    try:
        if recipe.stages:
            for number, stage in enumerate(recipe.stages, 1):  # every stage's settings, before the first trains
                training.trl_args(stage.recipe, run.stage(number, stage.method), placement,
                                  METHODS[stage.method].TRAIN_DEFAULTS)  # fmt: skip
            summary = pipeline.run(recipe, run, placement, run_method)
        else:
            summary = run_method(recipe, run, placement)
    except BaseException:
        # A run that fails for any reason before its first save (bad data, a model that does not load,
        # Ctrl-C, a bug) leaves no half-made directory behind, so the next run gets its name; once a
        # checkpoint or the adapter is saved everything is kept, and a resumed run's directory always is.
        if dist.is_main() and run.remove_if_unsaved():
            ui.say(f"removed {run.path}: the run stopped before saving anything")
        raise
    summary.placement, summary.processes, summary.smoke = placement.to_dict(), dist.world_size(), smoke
    if plan is not None:
        measured = None  # on CUDA, max_memory_allocated: a pipeline's largest stage's, with any sampling's
        if placement.device.type == "cuda":
            parts = summary.stages if recipe.stages else [summary.to_dict()]
            measured = max(
                max(s["peak_memory_mb"], (s.get("sampling") or {}).get("peak_memory_mb") or 0) for s in parts
            )
        summary.plan = {**plan, "measured_tensor_peak_mb": measured}
    if dist.is_main():
        run.write_summary(summary.to_dict())
    return run, summary


def trl_args(recipe: Recipe, run: RunDir):
    """TRL's config for the recipe's method as `train` builds it, placed for this machine (for scripts and tests
    that build a method's trainer themselves)."""
    return training.trl_args(recipe, run, Placement.resolve(recipe.model), METHODS[recipe.method].TRAIN_DEFAULTS)


SMOKE_TOKENS = 16  # the length of a smoke run's sampled completions and held-out answers
SMOKE_ROWS = 8  # the rows a smoke run's Toolformer augmentation annotates (rejection sampling: samples replies to)


def smoke_overrides(recipe) -> list[str]:
    """`lowtune train --smoke`: the overrides that make `recipe` a quick end-to-end check. 2 steps, 2 held-out
    problems answered in at most SMOKE_TOKENS tokens (and 2 held-out pairs for reward, DPO and ORPO), no periodic
    evaluation or time budget; the methods that sample (GRPO, RLOO, online DPO, PPO, rejection sampling) sample at most
    SMOKE_TOKENS tokens too, and Toolformer annotates SMOKE_ROWS rows (it annotates every training row before the
    first step; rejection sampling samples replies to that many prompts for the same reason). A pipeline: each
    stage's, set in the stage (`stages.2.train.max_steps=2`), so that every stage is a smoke run."""
    from lowtune.config import REASONING_METHODS, train_config_class

    if recipe.stages:
        return [f"stages.{i}.{o}" for i, stage in enumerate(recipe.stages, 1) for o in smoke_overrides(stage.recipe)]
    out = ["train.max_steps=2", "eval.n=2", f"eval.max_new_tokens={min(recipe.eval.max_new_tokens, SMOKE_TOKENS)}",
           "eval.every_minutes=null", "budget.minutes=null", "data.heldout=2"]  # fmt: skip
    if recipe.method in (*REASONING_METHODS, "ppo"):
        fields = {f.name: f.default for f in dataclasses.fields(train_config_class(recipe.method))}
        settings = {**fields, **train_defaults(recipe.method), **recipe.train}
        for key in ("max_completion_length", "max_new_tokens"):
            if settings.get(key) is not None:
                out.append(f"train.{key}={min(settings[key], SMOKE_TOKENS)}")
    if recipe.augment.tools or recipe.method == "rejection_sampling":  # both go over every row before step 1
        out.append(f"data.max_rows={min(recipe.data.max_rows or SMOKE_ROWS, SMOKE_ROWS)}")
    return out
