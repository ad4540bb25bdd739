import subprocess
import sys

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
