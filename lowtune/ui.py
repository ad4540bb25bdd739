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


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
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
