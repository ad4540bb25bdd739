"""Supervised fine-tuning: TRL's SFTTrainer on a (4-bit) base with a LoRA adapter.

Loss covers the assistant reply / completion only (TRL's completion_only_loss on the
prompt/completion records that lowtune.data produces); plain `text` rows train on every token.
Set `train.packing=true` to pack short rows into `train.max_length` blocks.

With `augment.tools`, Toolformer (Schick et al. 2023) comes first: the base model (adapter off)
annotates every reply or text with the tool calls that make what follows easier to predict
(`lowtune.toolformer`), and SFT trains on the annotated rows, so the model learns when and how to
call the tools. The annotated rows go to the run's augmented.jsonl, which `--resume` reuses. With
`augment.format: tool_calls` the kept calls become native tool calls (assistant `tool_calls` turns and
`tool` messages, `lowtune.toolformer.tool_calls`) instead of text in the reply.

Data with tool calls needs a chat template that renders them: a ChatML model whose template has no tools
gets lowtune's (`CHATML_TOOLS_TEMPLATE`), saved with the adapter's tokenizer.
"""

from __future__ import annotations

import dataclasses
import time

from lowtune import data, dist, models, training, ui
from lowtune.config import Recipe
from lowtune.data.records import sft_record
from lowtune.errors import LowtuneError
from lowtune.evaluate import heldout_accuracy, heldout_before
from lowtune.placement import Placement
from lowtune.results import BeforeAfter, RunSummary
from lowtune.runs import RunDir
from lowtune.toolformer.tool_calls import ensure_tool_template, tool_call_row

TRAIN_DEFAULTS = dict(learning_rate=2e-4, max_length=1024)


def run(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> RunSummary:
    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say, placement=placement)
    dataset = data.load(recipe.data, kind="sft", system_prompt=recipe.system_prompt())
    ui.say(f"{len(dataset)} training rows from {recipe.data.source}")
    augmented = None
    if recipe.augment.tools:
        dataset, augmented = toolformer(model, tokenizer, recipe, run_dir, dataset)
    if "tools" in dataset.column_names and ensure_tool_template(tokenizer):
        ui.say("the data has tool calls and the chat template has none: lowtune's ChatML template with tools is set "
               "on the tokenizer (saved with the adapter)")  # fmt: skip

    before = heldout_before(model, tokenizer, recipe)

    trainer = make_trainer(recipe, args, model, tokenizer, dataset)
    fit = training.fit(trainer, run_dir, recipe, placement, lambda: heldout_accuracy(model, tokenizer, recipe))

    after = heldout_accuracy(model, tokenizer, recipe)
    return RunSummary("sft", recipe.model.name, len(dataset), fit, heldout=BeforeAfter(before, after),
                      augmentation=augmented)  # fmt: skip


def make_trainer(recipe: Recipe, args, model, tokenizer, dataset):
    """TRL's SFTTrainer on the adapted model (the trainer `lowtune plan` traces, too)."""
    from trl import SFTTrainer

    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def _reply(record: dict) -> str:
    """The text a record trains on: its completion (the assistant reply) or its plain text."""
    if "text" in record:
        return record["text"]
    completion = record["completion"]
    return completion if isinstance(completion, str) else completion[-1]["content"]


def _with_reply(record: dict, text: str) -> dict:
    if "text" in record:
        return {**record, "text": text}
    completion = record["completion"]
    if isinstance(completion, str):
        return {**record, "completion": text}
    return {**record, "completion": [*completion[:-1], {**completion[-1], "content": text}]}


def toolformer(model, tokenizer, recipe: Recipe, run_dir: RunDir, dataset):
    """(the dataset with kept calls in its replies, the augmentation's statistics). Runs on the main
    process (`lowtune augment` and PPO refuse several); a resumed run reads run_dir/augmented.jsonl."""
    from datasets import Dataset

    from lowtune.toolformer.augment import STATS_COLUMNS, Augmenter
    from lowtune.tools import load_tool

    dist.refuse("Toolformer augmentation (augment.tools)")
    cfg = recipe.augment
    records = list(dataset)
    if cfg.format == "tool_calls" and "prompt" not in records[0]:
        raise LowtuneError(
            "augment.format: tool_calls needs a prompt per row (messages or prompt/completion data): the calls "
            "answer a user turn, and text rows have none"
        )
    earlier = run_dir.read_augmented()
    if earlier is not None:  # --resume: the rows this run already trained on
        rows, stats = earlier
        ui.say(f"Toolformer: the annotated rows of {run_dir.augmented}")
    else:
        settings = {"tau_s": cfg.tau_s, "tau_f": cfg.tau_f, "top_k": cfg.top_k, "samples": cfg.samples}
        augmenter = Augmenter(model, tokenizer, [load_tool(t) for t in cfg.tools], settings,
                              batch_size=cfg.batch_size, seed=recipe.data.seed)  # fmt: skip
        began = time.perf_counter()
        model.eval()
        with model.disable_adapter(), ui.progress_bar("augment", len(records)) as advance:
            results = augmenter.augment([_reply(r) for r in records], progress=advance)
        rows = [dataclasses.asdict(r) for r in results]
        stats = {"rows": len(rows), "rows_with_calls": sum(bool(r["calls"]) for r in rows),
                 "tools": {name: vars(s) for name, s in augmenter.stats.items()},
                 "seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
        ui.table("Toolformer augmentation", STATS_COLUMNS, augmenter.stats_rows())
        run_dir.write_augmented(rows, stats)
    keep = [i for i, r in enumerate(rows) if r["calls"] or not cfg.only_with_calls]
    if not keep:
        raise LowtuneError(
            f"Toolformer kept no call in {len(rows)} rows (augment.only_with_calls is on): nothing to train on. "
            "Sample more (augment.top_k, augment.samples), lower augment.tau_f, or use more data."
        )
    ui.say(f"Toolformer: {stats['rows_with_calls']} of {len(rows)} rows got a call; training on {len(keep)} rows")
    if cfg.format == "tool_calls":
        tools = [load_tool(t) for t in cfg.tools]
        return Dataset.from_list([_with_tool_calls(records[i], rows[i]["annotated"], tools) for i in keep]), stats
    return Dataset.from_list([_with_reply(records[i], rows[i]["annotated"]) for i in keep]), stats


def _with_tool_calls(record: dict, annotated: str, tools: list) -> dict:
    """The record with its reply's kept calls as native tool calls: prompt, completion (assistant turns with
    tool_calls, tool messages, the reply) and the tools' schemas."""
    prompt = record["prompt"] if isinstance(record["prompt"], list) else [{"role": "user", "content": record["prompt"]}]
    return sft_record(tool_call_row(annotated, tools, prompt), "messages")
