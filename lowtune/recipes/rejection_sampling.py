"""Rejection sampling: sample replies to the training prompts from the current model, keep the ones the rule rewards
accept, and SFT on them (rejection-sampling fine-tuning, Yuan et al. 2023; the rejection-sampling stage of DeepSeek-R1,
2025).

Each prompt of `data` gets `train.num_generations` samples at `train.temperature`, at most
`train.max_completion_length` tokens each, from the model with its adapter (`lora.start_from`, or in a pipeline the
stage before's). A sample is **accepted** when every reward with a non-zero weight in `rewards` scores it above 0:
accuracy_reward 1 (its answer is the reference), format_reward 1 (exactly `<think>…</think><answer>…</answer>`) when
`rewards.format` is on, length_reward above 0 (right and not cut off) when `rewards.length` is on. `train.keep:
shortest` keeps the shortest accepted sample of each prompt (in tokens; the first drawn of equal ones), `all` every
accepted one. The kept rows (the prompt's messages and the sample as the reply) go to the run's kept.jsonl, with
kept_stats.json (prompts, generated, accepted, kept); a resumed run reuses them. Then the sft method trains the
same adapter on them (`run`'s `train_sft`: the method table hands it over, as no method imports another).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from lowtune import data, dist, evaluate, models, rewards, ui
from lowtune.config import Recipe
from lowtune.errors import LowtuneError
from lowtune.placement import Placement
from lowtune.results import RunSummary
from lowtune.runs import RunDir

# SFT's (it trains on the kept samples), logging every step: a stage's SFT on a few hundred rows is short.
TRAIN_DEFAULTS = dict(learning_rate=2e-4, max_length=1024, logging_steps=1)


def run(
    recipe: Recipe, run_dir: RunDir, placement: Placement, args, train_sft: Callable[..., RunSummary]
) -> RunSummary:
    """Sample and keep (or reuse this run's kept.jsonl), then `train_sft` (the sft method's `run`) on the kept rows.
    `budget.minutes` is the stage's whole time: sampling in this invocation spends it first, the SFT gets the rest."""
    began = time.perf_counter()
    stats = sample(recipe, run_dir, placement, args)
    kept = dataclasses.replace(recipe.data, source=str(run_dir.kept), format="messages", max_rows=None,
                               bad_rows="error")  # fmt: skip
    budget = recipe.budget
    if budget.minutes is not None:
        spent = (time.perf_counter() - began) / 60  # loading the model to sample with included
        left = budget.minutes - spent
        if left <= 0:
            raise LowtuneError(
                f"rejection sampling took {spent:.1f} min of the stage's budget.minutes "
                f"{budget.minutes:g}, leaving no time to train on the kept samples: raise budget.minutes, or sample "
                "fewer (data.n_train, train.num_generations); the kept samples are saved and reused on --resume"
            )
        budget = dataclasses.replace(budget, minutes=left)
    summary = train_sft(dataclasses.replace(recipe, data=kept, budget=budget), run_dir, placement, args)
    summary.method = "rejection_sampling"
    summary.details = {**summary.details, "sampling": stats}
    return summary


def sample(recipe: Recipe, run_dir: RunDir, placement: Placement, args) -> dict:
    """Write the kept samples to run_dir/kept.jsonl (once: a resumed run reads them back); returns the statistics."""
    earlier = run_dir.read_kept()
    if earlier is not None:
        ui.say(f"rejection sampling: the kept samples of {earlier[0]}")
        return earlier[1]
    dist.refuse("rejection sampling")  # one process samples and writes kept.jsonl (as Toolformer's augmentation)
    funcs, _ = rewards.recipe_rewards(recipe.rewards, args.max_completion_length)  # no reward, nothing to accept
    cuda = placement is not None and placement.device.type == "cuda"
    if cuda:  # the sampling's peak, apart from the SFT's (training.fit measures that one)
        torch.cuda.reset_peak_memory_stats(placement.device)
    model, tokenizer = models.load(recipe.model, recipe.lora, say=ui.say, placement=placement)
    prompts = data.load(recipe.data, kind="prompt", system_prompt=recipe.system_prompt())
    k, batch = args.num_generations, args.sampling_batch_size
    ui.say(f"rejection sampling: {k} samples of each of {len(prompts)} prompts from {recipe.data.source}")
    began, rows, accepted = time.perf_counter(), [], 0
    model.eval()
    with ui.progress_bar("rejection sampling", len(prompts)) as advance:
        for start in range(0, len(prompts), batch):
            chunk = prompts.select(range(start, min(start + batch, len(prompts))))
            replies = evaluate.generate(model, tokenizer, list(chunk["prompt"]), args.max_completion_length,
                                        batch_size=len(chunk), do_sample=True, temperature=args.temperature,
                                        num_return_sequences=k)  # fmt: skip
            for i, row in enumerate(chunk):
                samples = replies[i * k : (i + 1) * k]
                ok = accepted_samples(funcs, samples, row["answer"], tokenizer)
                accepted += len(ok)
                chosen = ok if args.keep == "all" else sorted(ok, key=lambda s: s[1])[:1]  # sorted() is stable
                rows += [{"messages": [*row["prompt"], {"role": "assistant", "content": text}],
                          "answer": row["answer"]} for text, _ in chosen]  # fmt: skip
                advance()
    del model
    peak = round(torch.cuda.max_memory_allocated(placement.device) / 2**20, 1) if cuda else None
    stats = {"prompts": len(prompts), "generated": len(prompts) * k, "accepted": accepted, "kept": len(rows),
             "keep": args.keep, "rewards": [f.__name__ for f in funcs],
             "seconds": round(time.perf_counter() - began, 1), "peak_memory_mb": peak}  # fmt: skip
    if not rows:
        raise LowtuneError(
            f"rejection sampling kept none of the {stats['generated']} samples of {len(prompts)} prompts: no sample "
            f"passed {', '.join(stats['rewards'])}. Draw more (train.num_generations, data.n_train), sample longer "
            "(train.max_completion_length), or start from a stronger model (an SFT stage first)"
        )
    ui.say(f"rejection sampling: {accepted} of {stats['generated']} samples accepted, {len(rows)} kept ({args.keep})")
    run_dir.write_kept(rows, stats)
    return stats


def accepted_samples(funcs: list, samples: list[str], answer: str, tokenizer) -> list[tuple[str, int]]:
    """(text, length in tokens) of each sample every reward in `funcs` scores above 0, in the order drawn."""
    ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in samples]
    scores = [f(completions=samples, answer=[answer] * len(samples), completion_ids=ids) for f in funcs]
    return [(s, len(ids[i])) for i, s in enumerate(samples) if all(score[i] > 0 for score in scores)]
