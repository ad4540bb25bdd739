"""Writes that never clobber a user's file or tear: run files, `lowtune augment`'s output, the adapter."""

import json
import os
from pathlib import Path

import pytest
import yaml

from lowtune import files, recipes
from lowtune.config import load_recipe
from lowtune.errors import LowtuneError
from lowtune.runs import RunDir


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_run_files_are_rewritten_through_a_unique_fsynced_temporary(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    (tmp_path / ".summary.json.tmp").write_text("mine")  # the fixed temporary name of old
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(a).name)), replace(a, b))[1])
    run.write_summary({"steps": 1})
    run.write_summary({"steps": 2})
    assert json.loads(run.summary.read_text()) == {"steps": 2}
    assert (tmp_path / ".summary.json.tmp").read_text() == "mine"
    assert names(tmp_path) == [".summary.json.tmp", "summary.json"]
    renames = [e for e in events if e != "fsync"]
    assert len(renames) == 2 and renames[0][1] != ".summary.json.tmp"  # a unique name each time
    assert events.index(renames[0]) > 0 and events[events.index(renames[0]) - 1] == "fsync"  # data on disk first


def test_a_failed_rewrite_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.write_augmented([{"text": "old"}], {"rows": 1})

    def disk_full(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="disk full"):
        run.write_augmented([{"text": "new"}], {"rows": 2})
    assert run.read_augmented() == ([{"text": "old"}], {"rows": 1})
    assert names(tmp_path) == ["augmented.jsonl", "augmented_stats.json"]


def test_a_new_run_snapshots_its_config_with_the_default_permissions(tmp_path):
    recipe = load_recipe(None, ["model.name=tiny-random", f"output.dir={tmp_path}"])
    run = RunDir.create(recipe)
    assert yaml.safe_load((run.path / "config.yaml").read_text())["model"]["name"] == "tiny-random"
    umask = os.umask(0)
    os.umask(umask)
    assert (run.path / "config.yaml").stat().st_mode & 0o777 == 0o666 & ~umask
    assert names(run.path) == ["config.yaml"]


@pytest.fixture
def augment_cli(tmp_path, monkeypatch, tiny_path):
    """`lowtune augment` with the hours of annotation stubbed out; `during(out)` runs in their place."""
    from lowtune.cli import main
    from lowtune.toolformer.augment import Augmented, Augmenter

    def run(during=lambda out: None):
        out = tmp_path / "out.jsonl"

        def augment(self, texts, progress=None):
            during(out)
            return [Augmented(t, t) for t in texts]

        monkeypatch.setattr(Augmenter, "augment", augment)
        return main(["augment", "tiny-random", "--n", "2", "--out", str(out)]), out

    return run


def test_augment_refuses_to_replace_a_file_that_appeared_while_it_ran(augment_cli, tmp_path, capsys):
    (tmp_path / ".out.jsonl.partial").write_text("mine too")  # the fixed temporary name of old
    code, out = augment_cli(during=lambda out: out.write_text("mine"))
    said = capsys.readouterr().out
    assert code == 2 and "out.jsonl appeared while augmenting; it was left as it is" in said
    assert out.read_text() == "mine" and (tmp_path / ".out.jsonl.partial").read_text() == "mine too"
    assert names(tmp_path) == [".out.jsonl.partial", "out.jsonl"]


def test_augment_writes_its_rows_beside_an_old_temporary_and_leaves_nothing_else(augment_cli, tmp_path):
    (tmp_path / ".out.jsonl.partial").write_text("mine")
    code, out = augment_cli()
    assert code == 0 and len(out.read_text().splitlines()) == 2
    assert (tmp_path / ".out.jsonl.partial").read_text() == "mine"
    assert names(tmp_path) == [".out.jsonl.partial", "out.jsonl"]


def test_write_results_refuses_an_existing_file(tmp_path):
    from lowtune.toolformer.augment import Augmented, write_results

    out = tmp_path / "aug.jsonl"
    write_results(out, [Augmented("a", "a")])
    with pytest.raises(LowtuneError, match="appeared while augmenting"):
        write_results(out, [Augmented("b", "b")])
    assert json.loads(out.read_text())["text"] == "a" and names(tmp_path) == ["aug.jsonl"]


@pytest.mark.parametrize("fallback", [False, True])
def test_place_directory_never_replaces_even_an_empty_directory(tmp_path, monkeypatch, fallback):
    if fallback:  # no renameat2 (macOS, some file systems): exclusive mkdir, then rename onto it
        monkeypatch.setattr(files, "_rename_noreplace", lambda src, dst: False)
    staged, out = tmp_path / "staged", tmp_path / "out"
    staged.mkdir()
    (staged / "a.txt").write_text("new")
    out.mkdir()
    with pytest.raises(LowtuneError, match="appeared while merging"):
        files.place_directory(staged, out, "merging")
    assert names(out) == [] and (staged / "a.txt").read_text() == "new"
    out.rmdir()
    files.place_directory(staged, out, "merging")
    assert (out / "a.txt").read_text() == "new" and names(tmp_path) == ["out"]


ADAPTER_RUN = [
    "model.name=tiny-random",
    "data.n_train=8",
    "train.max_steps=2",
    "train.per_device_train_batch_size=4",
    "eval.task=null",
    "output.quiet=true",
]


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_an_adapter_path_that_appeared_during_training_is_left_as_it_is(tmp_path, monkeypatch, kind):
    from transformers import Trainer

    save_model = Trainer.save_model

    def user_writes_adapter_meanwhile(self, output_dir=None, *args, **kwargs):
        if output_dir and Path(output_dir).name == ".adapter.partial":
            adapter = Path(output_dir).parent / "adapter"
            if kind == "file":
                adapter.write_text("mine")
            else:
                adapter.mkdir()
                (adapter / "notes.txt").write_text("mine")
        return save_model(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(Trainer, "save_model", user_writes_adapter_meanwhile)
    with pytest.raises(LowtuneError) as e:
        recipes.train(load_recipe(None, [*ADAPTER_RUN, f"output.dir={tmp_path}"]))
    run = tmp_path / "sft"
    message = str(e.value)
    assert "\n" not in message and f"{run / 'adapter'} is not lowtune's" in message and "left as it is" in message
    assert (run / "adapter" / ("" if kind == "file" else "notes.txt")).read_text() == "mine"
    assert f"the trained adapter is in {run / '.adapter.partial'}" in message
    assert (run / ".adapter.partial" / "adapter_config.json").is_file() and not (run / ".adapter.previous").exists()


def test_a_file_at_the_adapter_staging_name_is_refused_not_removed(tmp_path):
    run_dir = tmp_path / "sft"
    recipe = load_recipe(None, [*ADAPTER_RUN, f"output.dir={tmp_path}"])
    real_create = RunDir.create

    def create(recipe):
        run = real_create(recipe)
        (run.path / ".adapter.partial").write_text("mine")
        return run

    with pytest.MonkeyPatch.context() as m:
        m.setattr(RunDir, "create", create)
        with pytest.raises(LowtuneError, match=r"\.adapter\.partial is not lowtune's"):
            recipes.train(recipe)
    assert (run_dir / ".adapter.partial").read_text() == "mine" and not (run_dir / "adapter").exists()
