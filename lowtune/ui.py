"""Console output: the rich console, a training progress bar, and summary tables."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from transformers import TrainerCallback

from lowtune import dist
from lowtune.results import PipelineSummary, RunSummary

console = Console(highlight=False, quiet=not dist.is_main())  # several processes: the main one speaks


def say(message: str) -> None:
    """A one-line status message (model fetch, conversion, where files went)."""
    console.print(f"[dim]lowtune:[/] {message}", soft_wrap=True)


def error(message: str) -> None:
    """Print an error as plain text: brackets and :codes: in it (a path, a model name) are not rich markup."""
    from rich.markup import escape

    if dist.is_main():
        console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, emoji=False)
    else:  # the other processes' console is quiet; their errors still show
        stderr = Console(highlight=False, stderr=True)
        stderr.print(f"[bold red]error:[/] {escape(f'[rank {dist.rank()}] {message}')}", soft_wrap=True, emoji=False)


class ProgressCallback(TrainerCallback):
    """A rich progress bar for any transformers/TRL trainer: step/total, loss, lr, tokens/s, ETA."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress: Progress | None = None
        self.last: dict[str, Any] = {}
        self.start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        if self.quiet:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, loss="-", lr="-", tps="-")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            tps = f"{state.num_input_tokens_seen / elapsed:,.0f}" if state.num_input_tokens_seen else "-"
            self.progress.update(self.task, completed=state.global_step, tps=tps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress and logs:
            fields = {}
            if "loss" in logs:
                fields["loss"] = f"{logs['loss']:.4f}"
            if "learning_rate" in logs:
                fields["lr"] = f"{logs['learning_rate']:.2e}"
            self.progress.update(self.task, **fields)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.stop()
            self.progress = None


def summary_table(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def table(title: str, columns: list[str], rows: list[list[str]], whole: tuple[str, ...] | None = None) -> None:
    """A rich table. The columns named in `whole` are never wrapped or cut (by default the first one, which
    names things: recipes, fields); the others wrap to fit the terminal."""
    t = Table(title=title, title_justify="left")
    whole = (columns[0],) if whole is None else whole
    for c in columns:
        t.add_column(c, no_wrap=c in whole)
    for r in rows:
        t.add_row(*r)
    console.print(t)


@contextlib.contextmanager
def progress_bar(description: str, total: int):
    """A rich progress bar for a loop of `total` items; yields the function that advances it by one."""
    progress = Progress(TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console)  # fmt: skip
    task = progress.add_task(description, total=total)
    with progress:
        yield lambda: progress.advance(task)


def pipeline_summary(run_path, summary: PipelineSummary) -> None:
    """A pipeline's stages, one row each, the held-out accuracy across them, and where the last adapter went."""
    rows = [("model", summary.model)]
    for stage in summary.stages:
        figures = f"{stage['steps']} steps, {stage['wall_time_s']:.1f} s"
        if stage.get("final_loss") is not None:
            figures += f", loss {stage['first_loss']:.3f} → {stage['final_loss']:.3f}"
        if sampling := stage.get("sampling"):
            figures += f", kept {sampling['kept']} of {sampling['generated']} samples"
        rows.append((f"{stage['stage']}. {stage['method']}", f"{figures} ({stage['dir']})"))
    if curve := summary.heldout_curve():
        points = " → ".join(f"{p['after']} {p['accuracy']:.0%}" for p in curve)
        rows.append((f"{curve[-1]['task']} accuracy (n={curve[-1]['n']})", points))
    summary_table("lowtune pipeline", rows)
    say(f'adapter of the last stage saved to {run_path}/adapter; try: lowtune generate {run_path} --prompt "..."')


def run_summary(run_path, summary: RunSummary | PipelineSummary) -> None:
    """The table that ends `lowtune train`, and what to try next."""
    if isinstance(summary, PipelineSummary):
        pipeline_summary(run_path, summary)
        return
    fit = summary.fit
    loss = "-" if fit.final_loss is None else f"{fit.first_loss:.4f} → {fit.final_loss:.4f}"
    rows = [
        ("run", str(run_path)),
        ("model", summary.model),
        ("device", fit.device),
        ("steps", str(fit.steps)),
        ("wall time", f"{fit.wall_time_s:.1f} s ({fit.s_per_step:.2f} s/step)"),
        ("tokens/s", f"{fit.tokens_per_s:,.0f}"),
        ("peak memory", f"{fit.peak_memory_mb:,.0f} MiB"),
        ("loss", loss),
    ]
    heldout = summary.heldout
    if heldout and heldout.before and heldout.after:
        before, after = heldout.before, heldout.after
        rows.append((f"{before.task} accuracy (n={before.n})", f"{before.accuracy:.0%} → {after.accuracy:.0%}"))
        if after.tools:
            calls = f"{before.replies_with_a_call} → {after.replies_with_a_call} of {after.n}"
            rows.append((f"replies that called {', '.join(after.tools)}", calls))
    if summary.augmentation:
        aug = summary.augmentation
        rows.append(("Toolformer augmentation", f"{aug['rows_with_calls']} of {aug['rows']} rows got a call"))
    pairwise = summary.pairwise
    if pairwise and pairwise.before and pairwise.after:
        label = f"held-out pairwise accuracy (n={pairwise.after.n})"
        rows.append((label, f"{pairwise.before.accuracy:.1%} → {pairwise.after.accuracy:.1%}"))
    if pref := summary.preference:
        label = f"held-out implicit-reward accuracy (n={pref.n})"
        rows.append((label, f"{pref.accuracy:.1%}, margin {pref.mean_margin:.3f}"))
    if summary.skipped_rows:
        rows.append(("skipped bad rows", f"{len(summary.skipped_rows)} (listed in summary.json)"))
    summary_table(f"lowtune {summary.method}", rows)
    adapter = f"{run_path}/adapter"
    if summary.pairwise is not None:  # a reward model scores, it does not generate
        try_it = f'lowtune score {run_path} --prompt "..." --reply "..."'
        say(f"adapter (LoRA + score head) saved to {adapter}; try: {try_it}")
        return
    tools = heldout.after.tools if heldout and heldout.after else None
    example = "Ken buys 16 packs of 986 shells. How many shells is that?" if tools else "What is 23 + 58?"
    also = f" --tools {','.join(tools)}" if tools else ""
    say(f'adapter saved to {adapter}; try: lowtune generate {run_path} --prompt "{example}"{also}')


def _mib(x: float) -> str:
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def plan_table(plan) -> None:
    """`lowtune plan`: the parts of the planned peak, the total, and whether it fits; a pipeline's stages, then
    its largest stage part by part."""
    if plan.method == "pipeline":
        fits = plan.memory_mb is not None
        rows = [[str(n), p.method, f"{p.batch} × {p.length}", _mib(p.tensor_peak_mb), _mib(p.total_mb),
                 *(["yes" if p.fits else "NO"] if fits else [])] for n, p in enumerate(plan.stages, 1)]  # fmt: skip
        columns = ["stage", "method", "batch × tokens", "tensor peak MiB", "total MiB", *(["fits"] if fits else [])]
        table(f"lowtune plan: a pipeline of {len(plan.stages)} stages on {plan.device}, {plan.model} (they run one "
              "after another: the peak is the largest stage's)", columns, rows, whole=("stage", "method"))  # fmt: skip
        largest = plan.stages.index(plan.largest) + 1
        say(f"stage {largest} ({plan.largest.method}), the largest, part by part:")
        _plan_parts(plan.largest)
        for n, p in enumerate(plan.stages, 1):
            if n != largest:
                _plan_notes(p, f"stage {n}: ")
    else:
        _plan_parts(plan)
    if plan.memory_mb is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        planned = f"planned {plan.total_mb / 1024:.2f} GiB, in {plan.seconds:.0f} s"
        say(f"{verdict} in {plan.memory_mb / 1024:.2f} GiB ({planned})")
    else:
        say(f"planned in {plan.seconds:.0f} s; give --gpu-memory 8GiB (or --gpu NAME) to check a GPU")


def _plan_parts(plan) -> None:
    rows = [[p.name, _mib(p.mb), p.how] for p in plan.parts]
    peak = "tensor peak" + (" (max_memory_allocated)" if plan.device == "cuda" else "")
    rows.append([peak, _mib(plan.tensor_peak_mb), ""])
    rows += [[p.name, _mib(p.mb), p.how] for p in plan.overheads]
    rows.append(["total", _mib(plan.total_mb), f"{plan.total_mb / 1024:.2f} GiB"])
    s = plan.settings
    checkpointing = "on" if s["gradient_checkpointing"] else "off"
    title = (
        f"lowtune plan: {plan.method} on {plan.device}, {plan.model}, batch {plan.batch} × {plan.length} tokens "
        f"({s['quantization']}, {s['dtype']}, checkpointing {checkpointing})"
    )
    table(title, ["part", "MiB", "how"], rows)
    _plan_notes(plan)


def _plan_notes(plan, where: str = "") -> None:
    if plan.cut_rows:
        say(f"{where}train.max_length={plan.max_length} cuts {plan.cut_rows} of {plan.rows} rows")
    for note in plan.notes:
        say(where + note)
