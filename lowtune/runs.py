"""The run directory: runs/<name>/{config.yaml, adapter/, metrics.jsonl, summary.json, checkpoints/}."""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import TrainerCallback

from lowtune.config import Recipe
from lowtune.errors import LowtuneError
from lowtune.files import replace_atomic


def _write_atomic(path: Path, text: str) -> None:
    """Write or rewrite a file of the run whole: a unique temporary beside it, fsync, rename."""
    replace_atomic(path, text)


class RunDir:
    """One training run's directory. Never reuses an existing directory."""

    def __init__(self, path: Path):
        self.path = path
        self.adapter = path / "adapter"
        self.checkpoints = path / "checkpoints"
        self.metrics = path / "metrics.jsonl"
        self.summary = path / "summary.json"
        self.resume_from: str | None = None  # a checkpoint directory when the run continues
        self.created = False  # made by this process (RunDir.create), not reopened

    def remove_if_unsaved(self) -> bool:
        """Remove the directory this process created if nothing was saved in it yet (no checkpoint, not even
        a half-written one, and no adapter, not even a staged one): a run that failed before its first save
        leaves nothing behind. A reopened or pre-existing directory is never removed. Returns whether it was."""
        saved = [self.adapter, *self.path.glob(".adapter*"), *self.checkpoints.glob("checkpoint-*")]
        if not self.created or any(p.exists() for p in saved):
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        return not self.path.exists()

    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint the trainer finished writing. transformers writes trainer_state.json
        last, so a save cut short (killed mid-write) has none, or a truncated one, and is passed over."""

        def finished(p: Path) -> bool:
            try:
                return p.name.split("-")[-1].isdigit() and bool(json.loads((p / "trainer_state.json").read_text()))
            except (OSError, ValueError):
                return False

        done = [p for p in self.checkpoints.glob("checkpoint-*") if finished(p)]
        return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)

    @classmethod
    def reopen(cls, path: Path, write: bool = True) -> RunDir:
        """An existing run, set to continue from its last checkpoint; metrics logged after it are dropped
        (by the process that `write`s: with several, the main one)."""
        run = cls(path)
        last = run.last_checkpoint()
        if last is None:
            raise LowtuneError(f"--resume {path}: no finished checkpoint in {run.checkpoints}; start a new run")
        run.resume_from = str(last)
        step = int(last.name.split("-")[-1])
        if write and run.metrics.is_file():  # those steps run again
            kept = [line for line in run.metrics.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
            _write_atomic(run.metrics, "".join(line + "\n" for line in kept))
        if write:
            run.summary.unlink(missing_ok=True)
        return run

    @classmethod
    def create(cls, recipe: Recipe) -> RunDir:
        """Make a fresh directory for `recipe` (name, then name-2, name-3, ...) and snapshot its config."""
        parent = Path(recipe.output.dir)
        name = recipe.output.name or recipe.method
        parent.mkdir(parents=True, exist_ok=True)
        path, n = parent / name, 1
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                n += 1
                path = parent / f"{name}-{n}"
        run = cls(path)
        run.created = True
        _write_atomic(path / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        return run

    def callback(self) -> TrainerCallback:
        return _MetricsCallback(self)

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl, stamped with the wall-clock time."""
        with self.metrics.open("a") as f:
            f.write(json.dumps({"step": record.get("step"), "time": round(time.time(), 3), **record}) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_atomic(self.summary, json.dumps(summary, indent=2) + "\n")

    def write_file(self, name: str, text: str) -> None:
        """Write a file of the run (e.g. augmented.jsonl) whole or not at all."""
        _write_atomic(self.path / name, text)


class _MetricsCallback(TrainerCallback):
    """Append one JSON line per logging step."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.run.log({"step": state.global_step, **logs})


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since start; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
