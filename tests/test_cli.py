import subprocess
import sys

import pytest

from lowtune.cli import main


def test_train_generate_eval_on_tiny_random(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = main(
        [
            "train",
            "sft",
            "--quiet",  # overrides may follow options
            "model.name=tiny-random",
            "data.n_train=32",
            "train.max_steps=2",
            "eval.n=3",
            "eval.max_new_tokens=3",
            f"output.dir={runs}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "lowtune sft" in out and "arithmetic accuracy (n=3)" in out
    assert (runs / "sft" / "summary.json").is_file()

    assert main(["generate", str(runs / "sft"), "--prompt", "What is 1 + 2?", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "user: What is 1 + 2?" in out and "assistant:" in out

    assert main(["eval", str(runs / "sft"), "--n", "4", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "4 held-out, 2 digit(s), +" in out and "accuracy" in out


def test_user_mistakes_exit_2_with_one_red_line_and_no_traceback(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: sft\ntrain:\n  learnig_rate: 1.0e-3\n")
    done = subprocess.run([sys.executable, "-m", "lowtune", "train", str(recipe)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert f"error: {recipe}:3: unknown key train.learnig_rate — did you mean learning_rate?" in done.stdout


def test_unknown_recipe_name(capsys):
    assert main(["train", "sfft"]) == 2
    assert "did you mean sft?" in capsys.readouterr().out


def test_models_and_recipes_listings(capsys, tiny_path):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "tiny-random" in out and "yes" in out
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "gpu/sft-qwen2.5-1.5b" in out and "reward" in out and "dpo" in out
    assert main(["recipes", "--explain", "sft"]) == 0
    assert "train.learning_rate" in capsys.readouterr().out
    assert main(["recipes", "--explain", "dpo"]) == 0
    out = capsys.readouterr().out
    assert "train.beta" in out and "5e-05 (lowtune)" in out and "data.heldout" in out
    assert main(["recipes", "--explain", "reward"]) == 0
    assert "data.bad_rows" in capsys.readouterr().out


def test_unrecognized_options_are_still_refused(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["train", "sft", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# ---------------------------------------------------------------- a model or run that is not there: one line


def error_line(out: str) -> str:
    """The one error line a user mistake ends in (status lines may come before it)."""
    lines = out.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), out
    assert all(line.startswith("lowtune:") for line in lines[:-1]), out
    return lines[-1]


def test_a_hub_id_offline_ends_in_one_line_and_leaves_no_run_directory(tmp_path):
    import os

    runs = tmp_path / "runs"
    argv = ["train", "sft", "model.name=lowtune-tests/no-such-model", f"output.dir={runs}"]
    done = subprocess.run(
        [sys.executable, "-m", "lowtune", *argv],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    line = error_line(done.stdout)
    for part in ["'lowtune-tests/no-such-model'", "builtin", "model directory", "as a Hugging Face id",  # looked for
                 "not in the local cache", "HF_HUB_OFFLINE is set",  # why
                 "check the spelling or path", "unset HF_HUB_OFFLINE"]:  # what to do  # fmt: skip
        assert part in line, (part, line)
    assert not runs.exists() or not any(runs.iterdir())
    assert "run directory" not in done.stdout  # stopped before making one


MISTYPED_RUN = {  # command -> (argv, what the error must say besides the name and "check the")
    "generate": (["generate", "runs/nope", "--prompt", "hi"], ["run, adapter or model directory", "Hugging Face id"]),
    "eval": (["eval", "runs/nope"], ["run, adapter or model directory", "Hugging Face id"]),
    "augment": (["augment", "runs/nope", "--n", "1", "--out", "aug.jsonl"], ["run, adapter or model directory"]),
    "score": (["score", "runs/nope", "--text", "hi"], ["neither a run directory nor an adapter directory"]),
    "merge": (["merge", "runs/nope", "--out", "merged"], ["neither a run directory nor an adapter directory"]),
    "export": (["export", "runs/nope"], ["model directory", "Hugging Face id"]),
}


@pytest.mark.parametrize("command", sorted(MISTYPED_RUN))
def test_a_mistyped_run_path_ends_in_one_line(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "sft").mkdir(parents=True)
    argv, says = MISTYPED_RUN[command]
    assert main(argv) == 2
    line = error_line(capsys.readouterr().out)
    for part in ["'runs/nope'", "check the", *says]:
        assert part in line, (part, line)
    assert "no such directory" in line or "does not exist" in line
    if command in ("generate", "merge"):  # a close name beside it is offered
        assert main([*argv[:1], "runs/sfy", *argv[2:]]) == 2
        assert "did you mean runs/sft?" in error_line(capsys.readouterr().out)


NOT_A_MODEL = {  # command -> (argv with DIR for the directory, what the error must say)
    "generate": (["generate", "DIR", "--prompt", "hi"], ["neither a run directory", "give a finished run"]),
    "eval": (["eval", "DIR"], ["neither a run directory", "give a finished run"]),
    "augment": (["augment", "DIR", "--n", "1", "--out", "aug.jsonl"], ["neither a run directory", "give a"]),
    "score": (["score", "DIR", "--text", "hi"], ["has no adapter", "give a finished run directory"]),
    "merge": (["merge", "DIR", "--out", "merged"], ["has no adapter", "give a finished run directory"]),
    "export": (["export", "DIR"], ["neither a run directory", "give a finished run"]),
    "train": (["train", "sft", "model.name=DIR"], ["not a model directory (no config.json)", "give a"]),
}


@pytest.mark.parametrize("command", sorted(NOT_A_MODEL))
def test_a_directory_that_is_not_a_model_ends_in_one_line(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    argv, says = NOT_A_MODEL[command]
    assert main([a.replace("DIR", "notes") for a in argv]) == 2
    line = error_line(capsys.readouterr().out)
    for part in ["notes", *says]:
        assert part in line, (part, line)
    assert not (tmp_path / "runs").exists()


def test_a_run_that_did_not_finish_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "sft"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("method: sft\n")
    assert main(["generate", "runs/sft", "--prompt", "hi"]) == 2
    line = error_line(capsys.readouterr().out)
    assert "run runs/sft has no adapter" in line and "did not finish training" in line
    assert "lowtune train --resume runs/sft" in line


def test_a_run_that_fails_before_saving_leaves_no_directory(tmp_path, monkeypatch, capsys):
    """Any failure before the first checkpoint (a bug, Ctrl-C) removes the directory the run made, so the
    next run gets the plain name; a run that saved a checkpoint keeps everything."""
    from lowtune.config import load_recipe
    from lowtune.recipes import sft
    from lowtune.runs import RunDir

    runs = tmp_path / "runs"
    argv = ["train", "sft", "model.name=tiny-random", f"output.dir={runs}", "--quiet"]

    def crash(recipe, run, *_):
        assert (run.path / "config.yaml").is_file()
        raise RuntimeError("a bug")

    monkeypatch.setattr(sft, "run", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)
    assert not (runs / "sft").exists()

    def interrupted(recipe, run, *_):
        raise KeyboardInterrupt

    monkeypatch.setattr(sft, "run", interrupted)
    assert main(argv) == 130
    assert not (runs / "sft").exists()
    assert RunDir.create(load_recipe(None, [f"output.dir={runs}"])).path == runs / "sft"  # the plain name

    def saved_then_crashed(recipe, run, *_):
        checkpoint = run.checkpoints / "checkpoint-2"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
        raise RuntimeError("after a checkpoint")

    monkeypatch.setattr(sft, "run", saved_then_crashed)
    with pytest.raises(RuntimeError, match="after a checkpoint"):
        main(argv)
    assert (runs / "sft-2" / "checkpoints" / "checkpoint-2").is_dir()
    monkeypatch.setattr(sft, "run", interrupted)  # a resumed run's directory is never removed
    assert main(["train", "--resume", str(runs / "sft-2"), "--quiet"]) == 130
    assert (runs / "sft-2" / "config.yaml").is_file()
