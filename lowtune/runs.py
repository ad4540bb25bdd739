"""The run directory, and the one place that knows its layout:

    runs/<name>/config.yaml          the recipe as the run started (name: the recipe's, or output.name)
                adapter/             the PEFT adapter + tokenizer (PPO: adapter/value/ holds the critic)
                checkpoints/         the trainer's checkpoints (resume from the last finished one)
                metrics.jsonl        one line per logging step
                summary.json         the run's figures, written when it ends
                augmented.jsonl      Toolformer: the annotated rows (with augmented_stats.json)
                kept.jsonl           rejection sampling: the accepted samples SFT trains on (with kept_stats.json)

    A pipeline (a recipe with `stages`) keeps each stage in a run directory of its own, and the last stage's adapter
    and every stage's figures at the top:

    runs/<name>/config.yaml          the pipeline's recipe
                stages/1-sft/        stage 1: a whole run directory (its recipe, adapter/, checkpoints/, metrics.jsonl,
                stages/2-grpo/       summary.json, ...); a stage after a merge holds its merged base in base/
                adapter/             the last stage's adapter, copied when the pipeline ends
                summary.json         every stage's figures and the held-out accuracy across stages

Training writes it through `RunDir`; later commands (generate, merge, export, score, PPO's reward model)
read a finished run through `find_adapter`, `read_recipe` and `read_summary`, as data: an old run is not
re-validated against today's TRL, and reading one imports no TRL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import sys
import time
import typing
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import TrainerCallback

from lowtune import dist
from lowtune.config import Recipe
from lowtune.errors import LowtuneError
from lowtune.files import did_you_mean_path, probe, replace_atomic


class RunDir:
    """One training run's directory. Never reuses an existing directory."""

    def __init__(self, path: Path):
        self.path = path
        self.config = path / "config.yaml"
        self.adapter = path / "adapter"
        self.checkpoints = path / "checkpoints"
        self.metrics = path / "metrics.jsonl"
        self.summary = path / "summary.json"
        self.augmented = path / "augmented.jsonl"
        self.augmented_stats = path / "augmented_stats.json"
        self.kept = path / "kept.jsonl"
        self.kept_stats = path / "kept_stats.json"
        self.stages = path / "stages"
        self.merged_base = path / "base"  # a pipeline stage that merged the adapter so far into the base
        self.resume_from: str | None = None  # a checkpoint directory when the run continues
        self.created = False  # made by this process (RunDir.create), not reopened

    # ------------------------------------------------------------ making, finding, reopening

    @staticmethod
    def name_of(recipe: Recipe) -> str:
        """The run's directory name: `output.name`, which `lowtune train` sets to the recipe's file name."""
        return recipe.output.name or recipe.method

    @classmethod
    def create(cls, recipe: Recipe) -> RunDir:
        """Make a fresh directory for `recipe` (name, then name-2, name-3, ...) and snapshot its config."""
        parent, name = Path(recipe.output.dir), cls.name_of(recipe)
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
        replace_atomic(run.config, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        return run

    @classmethod
    def latest(cls, recipe: Recipe) -> Path:
        """The newest run directory of this recipe's name (name, name-2, ...) that has a checkpoint."""
        parent, name = Path(recipe.output.dir), cls.name_of(recipe)
        found = [p for p in parent.glob(f"{name}*") if p.name == name or p.name.removeprefix(name + "-").isdigit()]
        found = [p for p in found if cls(p).can_resume()]
        if not found:
            raise LowtuneError(f"--resume: no run of {name} under {parent} has a checkpoint to resume from")
        return max(found, key=lambda p: int(p.name.removeprefix(name + "-")) if p.name != name else 1)

    @classmethod
    def reopen(cls, path: Path, write: bool = True) -> RunDir:
        """An existing run, set to continue from its last checkpoint; metrics logged after it are dropped
        (by the process that `write`s: with several, the main one). A pipeline is reopened as a whole: each stage
        continues where it stopped (`open_stage`)."""
        run = cls(path)
        if run.stages.is_dir():
            if not run.can_resume():
                raise LowtuneError(f"--resume {path}: no stage has a finished checkpoint yet; start a new run")
            if write:
                run.summary.unlink(missing_ok=True)
            return run
        last = run.last_checkpoint()
        if last is None:
            raise LowtuneError(f"--resume {path}: no finished checkpoint in {run.checkpoints}; start a new run")
        run.resume_from = str(last)
        step = int(last.name.split("-")[-1])
        if write and run.metrics.is_file():  # those steps run again
            kept = [line for line in run.metrics.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
            replace_atomic(run.metrics, "".join(line + "\n" for line in kept))
        if write:
            run.summary.unlink(missing_ok=True)
        return run

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

    def can_resume(self) -> bool:
        """A checkpoint to continue from; for a pipeline, a stage that finished or saved a checkpoint."""
        if self.stages.is_dir():
            return any(RunDir(p).summary.is_file() or RunDir(p).last_checkpoint() for p in self.stages.iterdir())
        return self.last_checkpoint() is not None

    def saved_anything(self) -> bool:
        """A checkpoint (even a half-written one) or an adapter (even a staged one), here or in a stage."""
        saved = [self.adapter, *self.path.glob(".adapter*"), *self.checkpoints.glob("checkpoint-*")]
        stages = self.stages.iterdir() if self.stages.is_dir() else []
        return any(p.exists() for p in saved) or any(RunDir(p).saved_anything() for p in stages)

    def remove_if_unsaved(self) -> bool:
        """Remove the directory this process created if nothing was saved in it yet (no checkpoint, not even
        a half-written one, and no adapter, not even a staged one): a run that failed before its first save
        leaves nothing behind. A reopened or pre-existing directory is never removed. Returns whether it was."""
        if not self.created or self.saved_anything():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        return not self.path.exists()

    # ------------------------------------------------------------ a pipeline's stages

    def stage(self, number: int, method: str) -> RunDir:
        """Stage `number` (from 1) of a pipeline, running `method`: stages/<number>-<method>/."""
        return RunDir(self.stages / f"{number}-{method}")

    def open_stage(self, number: int, recipe: Recipe) -> RunDir:
        """The directory of stage `number`, made with the stage's recipe as its config.yaml, or, for a stage that
        started before, reopened at its last checkpoint (one that saved none starts again in it, its metrics
        dropped; what it wrote there, e.g. kept.jsonl, is reused)."""
        stage = self.stage(number, recipe.method)
        if stage.last_checkpoint() is not None:
            stage = RunDir.reopen(stage.path, write=dist.is_main())
        elif dist.is_main() and stage.path.is_dir():
            stage.metrics.unlink(missing_ok=True)
        elif dist.is_main():
            stage.path.mkdir(parents=True)
            stage.created = True
        if dist.is_main():
            replace_atomic(stage.config, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        dist.barrier()
        return stage

    # ------------------------------------------------------------ writing

    def callback(self) -> TrainerCallback:
        return _MetricsCallback(self)

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl, stamped with the wall-clock time."""
        with self.metrics.open("a") as f:
            f.write(json.dumps({"step": record.get("step"), "time": round(time.time(), 3), **record}) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        replace_atomic(self.summary, json.dumps(summary, indent=2) + "\n")

    def save_adapter(self, trainer) -> None:
        """The trained PEFT adapter + tokenizer into adapter/, loadable without lowtune, on every process.

        Written beside and renamed into place, so a crash mid-save never leaves a half-written adapter/ (the
        checkpoints stay as they were). The staging names are fixed, in the run's own directory, so that the
        next save clears what a crash left there; anything at them or at adapter/ that lowtune did not make is
        left as it is and the save refused.
        """
        self._place_adapter(lambda staging: trainer.save_model(str(staging)))

    def copy_adapter(self, source: Path) -> None:
        """A copy of the adapter directory `source` (a pipeline's last stage's) into adapter/, as `save_adapter`
        places one."""

        def copy(staging: Path) -> None:
            if dist.is_main():
                shutil.copytree(source, staging)

        self._place_adapter(copy)

    def _place_adapter(self, write) -> None:
        """`write(staging)` fills the staging directory; it is then renamed into adapter/ (see `save_adapter`)."""
        staging, previous = self.path / ".adapter.partial", self.path / ".adapter.previous"
        self._refuse_foreign([staging, previous])
        if dist.is_main():
            shutil.rmtree(staging, ignore_errors=True)
        dist.barrier()
        write(staging)
        self._refuse_foreign([self.adapter], staged=staging)
        if dist.is_main() and self.adapter.exists():  # a finished run resumed for more steps: its old adapter goes
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(self.adapter, previous)
        if dist.is_main():  # trainer.save_model writes on the main process only
            os.replace(staging, self.adapter)
            shutil.rmtree(previous, ignore_errors=True)
        dist.barrier()

    def _refuse_foreign(self, paths: list[Path], staged: Path | None = None) -> None:
        """Stop, on every process, if one of `paths` holds something lowtune did not make there: the staging
        names only ever hold plain directories, adapter/ a directory with adapter_config.json (an older save)."""
        found = None
        if dist.is_main():
            for path in paths:
                ours = path.is_dir() and not path.is_symlink()
                if path == self.adapter:
                    ours = ours and (path / "adapter_config.json").is_file()
                if os.path.lexists(path) and not ours:
                    found = str(path)
                    break
        found = dist.broadcast(found)
        if found:
            where = f"the trained adapter is in {staged}" if staged else "the adapter was not saved"
            raise LowtuneError(
                f"{found} is not lowtune's (it appeared in the run directory during training); it was left as it "
                f"is and {where}. Move it away and continue with `lowtune train --resume {self.path}`"
            )

    # ------------------------------------------------------------ Toolformer's annotated rows

    def read_augmented(self) -> tuple[list[dict], dict] | None:
        """(rows, statistics) of an earlier augmentation of this run (a resumed run reuses them), or None."""
        if not self.augmented.is_file():
            return None
        rows = [json.loads(line) for line in self.augmented.read_text().splitlines() if line.strip()]
        return rows, json.loads(self.augmented_stats.read_text())

    def write_augmented(self, rows: list[dict], stats: dict) -> None:
        _write_rows(self.augmented, self.augmented_stats, rows, stats)

    # ------------------------------------------------------------ rejection sampling's kept samples

    def read_kept(self) -> tuple[Path, dict] | None:
        """(kept.jsonl, its statistics) of an earlier sampling of this run (a resumed run reuses them), or None."""
        if not self.kept.is_file():
            return None
        return self.kept, json.loads(self.kept_stats.read_text())

    def write_kept(self, rows: list[dict], stats: dict) -> None:
        _write_rows(self.kept, self.kept_stats, rows, stats)


class _MetricsCallback(TrainerCallback):
    """Append one JSON line per logging step."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.run.log({"step": state.global_step, **logs})


def _write_rows(rows_file: Path, stats_file: Path, rows: list[dict], stats: dict) -> None:
    """A method's generated rows (JSONL) and their statistics, each file whole or not at all; the statistics first,
    so the rows file, which marks the work done, never exists without them."""
    replace_atomic(stats_file, json.dumps(stats, indent=2) + "\n")
    replace_atomic(rows_file, "".join(json.dumps(r) + "\n" for r in rows))


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since start; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# ---------------------------------------------------------------- reading a finished run


def find_adapter(run_or_adapter: str | Path) -> Path:
    """The PEFT adapter directory of a run directory (or the adapter directory itself)."""
    path = Path(run_or_adapter)
    for candidate in (path / "adapter", path):
        if probe((candidate / "adapter_config.json").is_file):
            return candidate
    if not probe(path.exists):
        raise LowtuneError(
            f"{str(path)!r} does not exist{did_you_mean_path(path)}; it is neither a run directory nor an adapter "
            "directory (e.g. runs/sft); check the path"
        )
    if probe((path / "checkpoints").is_dir):
        raise LowtuneError(
            f"{path} has no adapter (no adapter/adapter_config.json): the run did not finish training; "
            f"continue it with `lowtune train --resume {path}`"
        )
    raise LowtuneError(
        f"{path} has no adapter (no adapter/adapter_config.json or adapter_config.json); give a finished run "
        "directory (e.g. runs/sft) or its adapter directory"
    )


def is_run_or_adapter(path: str | Path) -> bool:
    path = Path(path)
    return any(probe((p / "adapter_config.json").is_file) for p in (path / "adapter", path))


def adapter_config(adapter_dir: Path) -> dict:
    """The adapter's adapter_config.json; a damaged one is a LowtuneError."""
    path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LowtuneError(f"{path} cannot be read ({first}); the adapter is damaged, train it again") from None
    if not isinstance(config, dict):
        raise LowtuneError(f"{path} is not a JSON object; the adapter is damaged, train it again")
    return config


def adapter_task(adapter_dir: Path) -> str | None:
    """PEFT's task type of an adapter: CAUSAL_LM (a language model) or SEQ_CLS (a reward model)."""
    return adapter_config(adapter_dir).get("task_type")


def read_recipe(adapter_dir: Path) -> Recipe | None:
    """The recipe of the run that trained `adapter_dir` (None for an adapter outside a run), read as data:
    each section's fields as the run recorded them (fields lowtune no longer knows are passed over), `train`
    as a plain dict, not checked against today's TRL config class."""
    path = adapter_dir.parent / "config.yaml"
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise LowtuneError(f"{path} cannot be read ({e}); the run's config is damaged") from None
    if not isinstance(raw, dict):
        raise LowtuneError(f"{path} is not a mapping of recipe sections; the run's config is damaged")
    stages = raw.get("stages")
    if isinstance(stages, list) and stages and isinstance(stages[-1], dict):  # a pipeline: its last stage trained it
        last = RunDir(adapter_dir.parent).stage(len(stages), str(stages[-1].get("method")))
        if last.config.is_file():
            return read_recipe(last.adapter)
    sections = {}
    for name, cls in typing.get_type_hints(Recipe).items():
        if dataclasses.is_dataclass(cls) and isinstance(raw.get(name), dict):
            known = {f.name for f in dataclasses.fields(cls)}
            sections[name] = cls(**{k: v for k, v in raw[name].items() if k in known})
    return Recipe(method=raw.get("method", "sft"), train=dict(raw.get("train") or {}), **sections)


def read_summary(adapter_dir: Path) -> dict[str, Any]:
    """The run's summary.json ({} for an adapter outside a run, or a run that has none)."""
    path = adapter_dir.parent / "summary.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def base_model(adapter_dir: Path) -> str:
    """The base the adapter was trained on: the run's model.name, else the adapter's base_model_name_or_path."""
    recipe = read_recipe(adapter_dir)
    if recipe is not None:
        return recipe.model.name
    base = adapter_config(adapter_dir).get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise LowtuneError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path")
    return base
