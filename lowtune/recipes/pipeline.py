"""Pipelines: a recipe's `stages`, run in order on one base, each training the adapter the stage before left.

A stage is a whole recipe of its own method (its sections merged over the pipeline's, `lowtune.config.load`) and
runs in a run directory of its own inside the pipeline's (`RunDir.open_stage`: stages/<n>-<method>/). A later stage
starts from the previous stage's adapter, loaded trainable (`lora.start_from`), so the pipeline trains ONE LoRA
adapter throughout. The methods that put a fresh adapter on the bare base and take their reference by switching it
off (DPO, KTO, online DPO) cannot continue one: before such a stage the adapter so far is merged into the base
(verified, `export.merge`, into the stage's base/), the stage trains a fresh adapter on that, and the stages after it
continue that adapter on that base. A later stage's score before training is the previous stage's after it, so its
`eval.before` is off.

When the last stage ends its adapter is copied to the pipeline's adapter/ and every stage's figures go to the
pipeline's summary.json (`results.PipelineSummary`), so `lowtune generate|merge|eval RUN` take the pipeline as any
run. `--resume` skips the stages that finished (those with a summary.json) and continues the current one from its
last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch

from lowtune import dist, runs, ui
from lowtune.config import FRESH_ADAPTER_METHODS, Recipe, Stage
from lowtune.placement import Placement
from lowtune.results import PipelineSummary, RunSummary
from lowtune.runs import RunDir

MERGE_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def run(
    recipe: Recipe, run: RunDir, placement: Placement, run_method: Callable[[Recipe, RunDir], RunSummary]
) -> PipelineSummary:
    """Run (or continue) every stage of `recipe` in `run`; `run_method(stage_recipe, stage_run)` trains one stage
    and returns its summary, which is written to the stage's summary.json. Returns the pipeline's summary."""
    from transformers import set_seed

    base, previous, figures = recipe.model.name, None, []
    for number, stage in enumerate(recipe.stages, 1):
        name = f"stage {number}/{len(recipe.stages)} ({stage.method})"
        stage_run = run.stage(number, stage.method)
        merge = stage.method in FRESH_ADAPTER_METHODS and previous is not None
        if merge:
            base = str(stage_run.merged_base.resolve())
        if stage_run.summary.is_file():
            ui.say(f"{name}: finished in {stage_run.path}, skipped")
            summary = runs.read_summary(stage_run.adapter)
        else:
            stage_recipe = stage_recipe_of(recipe, stage, base, None if merge else previous)
            stage_run = run.open_stage(number, stage_recipe)
            resuming = f", resuming from {stage_run.resume_from}" if stage_run.resume_from else ""
            ui.say(f"{name} in {stage_run.path}{resuming}")
            if merge and not stage_run.merged_base.exists():
                _merge(previous, stage_run, placement)
            set_seed(stage_recipe.data.seed)  # a stage trains as it would alone, whatever ran before it
            try:
                summary = run_method(stage_recipe, stage_run, placement).to_dict()
            except BaseException:
                if stage_run.remove_if_unsaved():
                    ui.say(f"removed {stage_run.path}: the stage stopped before saving anything")
                raise
            if dist.is_main():
                stage_run.write_summary(summary)
        figures.append({"stage": number, "method": stage.method, "dir": str(stage_run.path.relative_to(run.path)),
                        **summary})  # fmt: skip
        previous = stage_run
    run.copy_adapter(previous.adapter)
    return PipelineSummary(model=recipe.model.name, stages=figures)


def stage_recipe_of(recipe: Recipe, stage: Stage, base: str, previous: RunDir | None) -> Recipe:
    """The recipe stage `stage` trains with: its own, with the pipeline's model, lora and output as they are now (the
    command line may have changed them since loading), on `base`, starting from `previous`'s adapter."""
    model = dataclasses.replace(copy.deepcopy(recipe.model), name=base)
    lora = copy.deepcopy(recipe.lora)
    if previous is not None:
        lora.start_from = str(previous.adapter)
    evaluate = copy.deepcopy(stage.recipe.eval)
    if previous is not None or base != recipe.model.name:
        evaluate.before = False  # the stage before scored this stage's starting point
    return dataclasses.replace(stage.recipe, model=model, lora=lora, output=copy.deepcopy(recipe.output),
                               eval=evaluate)  # fmt: skip


def _merge(previous: RunDir, stage: RunDir, placement: Placement) -> None:
    """The adapter so far merged into its base, into the stage's base/ (a method that trains a fresh adapter)."""
    from lowtune.export.merge import merge

    ui.say(f"{stage.path.name} puts a fresh adapter on the base: merging {previous.adapter} into {stage.merged_base}")
    merge(previous.path, stage.merged_base, MERGE_DTYPES.get(placement.dtype, "fp32"))
