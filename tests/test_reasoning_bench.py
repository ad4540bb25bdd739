"""The reasoning study's harness (benchmarks/reasoning.py): its arms' recipes and budgets, its figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import reasoning  # noqa: E402
from lowtune.config import load_recipe  # noqa: E402


def test_each_arm_is_its_shipped_recipe_cut_to_its_stages_with_the_budget_shared_out(tmp_path):
    rate = reasoning.rs_problems_per_minute()
    cfg = {"model": "smollm2-135m-instruct", "minutes": 12.0, "steps": None, "eval_every": 3.0, "n_curve": 50,
           "max_new_tokens": 96, "length_weight": 0.1, "rs_problems_per_minute": rate}  # fmt: skip
    for arm, (name, _, shares) in reasoning.PLAN.items():
        path = reasoning.recipe_file(arm, tmp_path)
        recipe = load_recipe(path, reasoning.overrides(arm, cfg, tmp_path, name == "r1"))
        stages = [s.recipe for s in recipe.stages] or [recipe]
        assert len(stages) == len(shares), arm
        assert abs(sum(s.budget.minutes for s in stages) - 12.0) < 0.01, arm  # equal minutes for every arm
        assert all(s.eval.every_minutes == 3.0 and s.eval.n == 50 and s.eval.task == "multistep" for s in stages), arm
        assert all(s.data.steps == 3 for s in stages), arm  # trained on 4 operands, scored on held-out 4 operands
        assert stages[0].data.traces == (arm != "direct_sft"), arm
    r1 = load_recipe(reasoning.recipe_file("r1", tmp_path), reasoning.overrides("r1", cfg, tmp_path, True))
    assert [s.method for s in r1.stages] == ["sft", "grpo", "rejection_sampling"]
    assert r1.stages[1].recipe.rewards.length == 0
    arm = "cold_start_grpo_length"
    longer = load_recipe(reasoning.recipe_file(arm, tmp_path), reasoning.overrides(arm, cfg, tmp_path, True))
    assert longer.stages[1].recipe.rewards.length == 0.1
    only = load_recipe(reasoning.recipe_file("grpo_only", tmp_path),
                       reasoning.overrides("grpo_only", cfg | {"start_from": "runs/cold"}, tmp_path, True))  # fmt: skip
    assert [s.method for s in only.stages] == ["grpo"] and only.lora.start_from == "runs/cold"
    assert only.stages[0].recipe.data.seed == r1.stages[1].recipe.data.seed  # r1's GRPO stage, its own problems
    tail = load_recipe(reasoning.recipe_file("grpo_rs", tmp_path),
                       reasoning.overrides("grpo_rs", cfg | {"start_from": "runs/cold"}, tmp_path, True))  # fmt: skip
    assert [s.method for s in tail.stages] == ["grpo", "rejection_sampling"] and tail.lora.start_from == "runs/cold"
    assert [round(s.recipe.budget.minutes, 3) for s in tail.stages] == [4.8, 7.2]  # r1's 20 : 30
    rs = load_recipe(reasoning.recipe_file("rs_only", tmp_path),
                     reasoning.overrides("rs_only", cfg | {"start_from": "runs/cold"}, tmp_path, True))  # fmt: skip
    assert [s.method for s in rs.stages] == ["rejection_sampling"]
    user = load_recipe(ROOT / "recipes" / "r1.yaml")
    shipped = user.stages[2].recipe.data
    assert rs.stages[0].recipe.data.seed == shipped.seed  # r1's own rejection-sampling problems,
    # as many as its shipped 18 minutes sample, in proportion to the arm's minutes (12 here; r1's share 0.3 of 12)
    assert rs.stages[0].recipe.data.n_train == round(shipped.n_train * 12 / reasoning.RS_MINUTES)
    assert r1.stages[2].recipe.data.n_train == round(shipped.n_train * 3.6 / reasoning.RS_MINUTES)
    assert tail.stages[1].recipe.data.n_train == round(shipped.n_train * 7.2 / reasoning.RS_MINUTES)
    for i in (0, 1):  # the other stages' problems as shipped
        assert r1.stages[i].recipe.data.n_train == user.stages[i].recipe.data.n_train
    assert only.stages[0].recipe.data.n_train == user.stages[1].recipe.data.n_train
    steps = load_recipe(reasoning.recipe_file("r1", tmp_path), reasoning.overrides(
        "r1", cfg | {"minutes": None, "steps": 20, "rs_problems_per_minute": None}, tmp_path, True))  # fmt: skip
    assert [s.recipe.train["max_steps"] for s in steps.stages] == [10, 4, 6]  # a budget in steps: r1's 50 : 20 : 30
    assert steps.stages[2].recipe.data == shipped  # and the shipped problems
    chosen = load_recipe(reasoning.recipe_file("rs_only", tmp_path), reasoning.overrides(
        "rs_only", cfg | {"start_from": "runs/cold", "set": ["stages.1.data.n_train=7"]}, tmp_path, True))  # fmt: skip
    assert chosen.stages[0].recipe.data.n_train == 7  # --set has the last word
    zero = load_recipe(ROOT / "recipes" / "r1-zero.yaml")
    assert zero.method == "grpo" and "<think>" in zero.system_prompt()  # the format asked for, no cold start
    assert yaml.safe_load((ROOT / "recipes" / "r1.yaml").read_text())["data"]["system_prompt"] is None


def test_as_shipped_runs_the_recipe_a_user_runs(tmp_path, monkeypatch, capsys):
    cfg = {"model": "smollm2-135m-instruct", "minutes": None, "steps": None, "eval_every": None, "n_curve": 50,
           "max_new_tokens": 96, "as_shipped": True}  # fmt: skip
    ran = load_recipe(reasoning.recipe_file("r1", tmp_path), reasoning.overrides("r1", cfg, tmp_path, True))
    user = load_recipe(ROOT / "recipes" / "r1.yaml")
    for a, b in zip(ran.stages, user.stages, strict=True):
        assert a.recipe.train == b.recipe.train and a.recipe.data == b.recipe.data and a.recipe.eval == b.recipe.eval
        assert a.recipe.budget == b.recipe.budget
    assert ran.output.dir == str(tmp_path) and ran.model.name == user.model.name

    for extra, said in ((["--only", "cold_start_sft"], "--as-shipped runs a whole recipe as shipped"),
                        (["--n-curve", "20"], "--as-shipped evaluates as the recipe does")):  # fmt: skip
        argv = ["reasoning.py", "--as-shipped", *extra, "--model", "tiny-random", "--out", str(tmp_path)]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit):
            reasoning.main()
        assert said in capsys.readouterr().err
    assert not any(tmp_path.glob("*.json"))


def test_the_minutes_count_sampling_and_the_curve_runs_across_stages():
    level = {"accuracy": 0.5, "format": 1.0, "think_tokens": 40.0}
    result = {
        "levels": {"3": level, "4": {**level, "accuracy": 0.25}, "5": level},
        "parts": [
            {"stage": 1, "method": "sft", "steps": 10, "wall_time_s": 60.0, "sampling_s": 0.0,
             "eval_during": [{"train_time_s": 30.0, "accuracy": 0.1, "mean_reply_tokens": 50}],
             "eval_after": {"accuracy": 0.2, "mean_reply_tokens": 45}},
            {"stage": 2, "method": "rejection_sampling", "steps": 5, "wall_time_s": 60.0, "sampling_s": 120.0,
             "eval_during": [], "eval_after": {"accuracy": 0.25, "mean_reply_tokens": 40}},
        ],
    }  # fmt: skip
    row = reasoning.summarize("r1", result)
    assert row["minutes"] == 4.0 and row["steps"] == 15 and row["accuracy"] == 0.25
    assert [(c["minutes"], c["stage"], c["accuracy"]) for c in row["curve"]] == [
        (0.5, 1, 0.1), (1.0, 1, 0.2), (4.0, 2, 0.25)
    ]  # fmt: skip


def test_reasoning_harness_quick_on_tiny_random(tmp_path, tiny_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "results"
    arms = [
        "base",
        "direct_sft",
        "r1_zero",
    ]  # no training; a pipeline arm; a one-method arm (r1's stages: test_pipeline)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "reasoning.py"), "--quick", "--model", "tiny-random", "--out",
         str(out), "--only", *arms],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "reasoning.json").read_text())
    assert list(report["arms"]) == arms and report["machine"]["torch"]
    assert sorted(report["reference_think_tokens"]) == ["3", "4", "5"]  # the worked traces' lengths, per level
    for arm, row in report["arms"].items():
        assert "error" not in row, (arm, row.get("log_tail"))
        assert sorted(row["levels"]) == ["3", "4", "5"] and all(lv["n"] == 2 for lv in row["levels"].values())
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["format"] <= 1
        assert row["steps"] == (0 if arm == "base" else 2), arm
        if arm != "base":  # periodic evaluations and the final one
            assert len(row["curve"]) >= 2 and row["parts"][0]["eval_after"] is not None, arm
    grpo = report["arms"]["r1_zero"]["parts"][0]["grpo"]
    assert len(grpo) == 2 and all("completion_tokens" in s and "think_tokens" in s for s in grpo)
    table = (out / "reasoning.md").read_text()
    assert all(f"| {arm} |" in table for arm in arms) and (out / "reasoning.png").stat().st_size > 0


def test_set_overrides_every_arm_and_merge_brings_arms_of_the_same_settings_together(tmp_path):
    """`--set` reaches each arm's recipe; `--merge OTHER.json` replaces the named results' arms by OTHER's (refused
    when the settings differ), keeps the harness's order of arms and says in the table which file each came from."""
    cfg = {"model": "smollm2-135m-instruct", "minutes": 10.0, "steps": None, "eval_every": 2.5, "n_curve": 50,
           "max_new_tokens": 96, "length_weight": 0.1, "set": ["stages.2.train.learning_rate=1e-4"]}  # fmt: skip
    path = reasoning.recipe_file("cold_start_grpo", tmp_path)
    recipe = load_recipe(path, reasoning.overrides("cold_start_grpo", cfg, tmp_path, True))
    assert recipe.stages[1].recipe.train["learning_rate"] == 1e-4

    level = {"accuracy": 0.5, "format": 1.0, "think_tokens": 30.0}
    result = {"levels": {"3": level, "4": level, "5": level},
              "parts": [{"stage": 1, "method": "sft", "steps": 9, "wall_time_s": 600.0, "sampling_s": 0.0,
                         "eval_during": [], "eval_after": {"accuracy": 0.5}}]}  # fmt: skip
    row = reasoning.summarize("cold_start_sft", result)
    settings = {"model": "m", "minutes": 10.0, "steps": None, "n": 100, "n_level": 50, "n_curve": 50, "digits": 1}
    machine = {"cpu": "EPYC", "cores": 2, "torch": "2.13.0+cpu"}
    stem = tmp_path / "reasoning"
    first = {"arms": {"base": {**row, "accuracy": 0.04}, "r1": {**row, "accuracy": 0.26}}}
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine, "settings": settings, **first}))
    other = tmp_path / "again.json"
    other.write_text(json.dumps({"machine": machine, "settings": {**settings, "n": 50}, "arms": {"r1": row}}))
    with pytest.raises(SystemExit, match=r"other settings than .* \(n\)"):
        reasoning.merged(stem, [other])
    other.write_text(json.dumps({"machine": machine, "settings": settings,
                                 "arms": {"r1": {**row, "accuracy": 0.7}, "cold_start_sft": row}}))  # fmt: skip
    report = reasoning.merged(stem, [other])
    assert list(report["arms"]) == ["base", "cold_start_sft", "r1"]  # the harness's order
    assert [r[:2] for r in reasoning.table_rows(report)] == [["base", "4%"], ["cold_start_sft", "50%"], ["r1", "70%"]]
    assert "measured_in" not in report["arms"]["base"] and report["arms"]["r1"]["measured_in"] == "again.json"
    reasoning.write(stem, report)
    table = stem.with_suffix(".md").read_text()
    assert "cold_start_sft, r1 in again.json; base in the run they were merged into" in table
    assert stem.with_suffix(".png").stat().st_size > 0
    assert "--start-from" not in table
    reasoning.write(stem, {**report, "settings": {**settings, "start_from": "runs/cold"}})  # arms from a checkpoint
    assert "Every arm continues the adapter of `runs/cold` (`--start-from`)" in stem.with_suffix(".md").read_text()
    reasoning.write(stem, {**report, "settings": {**settings, "minutes": None, "as_shipped": True, "n_curve": None}})
    table = stem.with_suffix(".md").read_text()
    assert "each recipe as shipped (its own steps)" in table and "its recipe's learning-rate schedule" in table


def test_the_later_stage_arms_refuse_to_run_without_a_cold_start(tmp_path, monkeypatch, capsys):
    argv = "reasoning.py --only base rs_only grpo_rs --quick --model tiny-random --out".split() + [str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        reasoning.main()
    assert "the arms grpo_rs, rs_only train r1's later stages from a cold start" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_set_given_twice_keeps_both_overrides(tmp_path, monkeypatch):
    """`--set A --set B` is A and B, as `--set A B` is (argparse's plain nargs would keep only the last --set)."""
    seen = {}

    def stop(script, arm, cfg, workdir):
        seen.update(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(reasoning, "run_worker", stop)
    argv = "reasoning.py --only base --quick --model tiny-random --set a=1 --set b=2 c=3 --out".split()
    monkeypatch.setattr(sys, "argv", [*argv, str(tmp_path)])
    with pytest.raises(SystemExit):
        reasoning.main()
    assert seen["set"] == ["a=1", "b=2", "c=3"]
