"""The method-comparison harness (benchmarks/methods.py) and what it stands on: the training-time
budget, periodic held-out evaluation, and evaluation with tools."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowtune import recipes
from lowtune.evaluate import heldout_accuracy

ROOT = Path(__file__).resolve().parents[1]


def test_budget_stops_training_and_periodic_evaluation_draws_a_curve(tiny_recipe):
    recipe = dataclasses.replace(
        tiny_recipe,
        train={**tiny_recipe.train, "max_steps": 100_000},
        budget=dataclasses.replace(tiny_recipe.budget, minutes=0.05),
        eval=dataclasses.replace(tiny_recipe.eval, every_minutes=0.01, before=False),
    )
    run, summary = recipes.train(recipe)
    assert summary["stopped_by_budget"]
    assert 0 < summary["steps"] < 100_000
    # 3 s of training, the evaluations' own time left out of it.
    assert 3 <= summary["wall_time_s"] < 3 + 5 * (summary["s_per_step"] + 0.2)
    assert summary["eval_before"] is None and summary["eval_after"] is not None
    curve = summary["eval_during"]
    assert len(curve) >= 2
    assert [p["step"] for p in curve] == sorted(p["step"] for p in curve)
    assert all(p["train_time_s"] >= 0.6 * (i + 1) for i, p in enumerate(curve))
    logged = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["eval_accuracy"] for r in logged if "eval_accuracy" in r] == [p["accuracy"] for p in curve]
    assert summary["trainable_params"] > 0
    assert (run.adapter / "adapter_config.json").is_file()


def test_evaluation_with_tools_runs_the_calculator(tiny_recipe, monkeypatch):
    """eval.tools routes held-out answers through tool-augmented generation and counts the calls."""
    import lowtune.toolformer.generate as generate

    seen = []

    def fake(model, tokenizer, question, tools, max_new_tokens, **kw):
        seen.append((question, [t.name for t in tools]))
        a, b = (int(x) for x in question.removeprefix("What is ").rstrip("?").split(" + "))
        return f"{a} + {b} = {a + b}", [{"tool": "Calculator", "input": f"{a} + {b}", "output": str(a + b)}]

    monkeypatch.setattr(generate, "generate_with_tools", fake)
    from lowtune import models

    recipe = dataclasses.replace(tiny_recipe, eval=dataclasses.replace(tiny_recipe.eval, tools=["calculator"]))
    model, tokenizer = models.load(recipe.model)
    result = heldout_accuracy(model, tokenizer, recipe)
    assert result.accuracy == 1.0 and result.replies_with_a_call == recipe.eval.n
    assert len(seen) == recipe.eval.n and all(tools == ["Calculator"] for _, tools in seen)


def test_methods_harness_quick_on_tiny_random(tmp_path, tiny_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "results"
    script = ROOT / "benchmarks" / "methods.py"
    # Every worker of its own (ppo-rm, toolformer, sft-grpo) and the generic one for a method that samples (grpo)
    # and one that does not (sft); each other method's recipe is trained by its own test file.
    methods = ["sft", "grpo", "ppo-rm", "toolformer", "sft-grpo"]
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--model", "tiny-random", "--out", str(out), "--only", *methods],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "methods.json").read_text())
    assert list(report["methods"]) == methods
    assert report["machine"]["torch"] and report["base"]["n"] == 4
    for method, row in report["methods"].items():
        assert "error" not in row, (method, row.get("log_tail"))
        assert row["steps"] == (4 if method == "sft-grpo" else 2), method
        assert row["tokens"] > 0, method
        assert row["peak_memory_mb"] > 0 and row["trainable_params"] > 0, method
        assert row["accuracy_after"] is not None and row["reply_tokens"] > 0, method
        assert (row["completion_tokens"] is not None) == (method in ("grpo", "rloo", "sft-grpo")), method
        # base point, at least one periodic evaluation, the final one
        assert len(row["curve"]) >= 3 and row["curve"][0]["minutes"] == 0, method
    assert report["methods"]["ppo-rm"]["trainable_params"] > report["methods"]["sft"]["trainable_params"]  # + value
    assert report["methods"]["ppo-rm"]["reward_model"]["steps"] == 2
    assert report["methods"]["toolformer"]["augmentation"]["rows"] == 3
    assert report["methods"]["toolformer"]["replies_with_a_call"] is not None  # evaluated with the calculator
    assert [p["name"] for p in report["methods"]["sft-grpo"]["parts"]] == ["sft", "grpo"]
    table = (out / "methods.md").read_text()
    assert all(f"| {m} |" in table for m in report["methods"])
    assert (out / "methods.png").stat().st_size > 0


def test_grpo_variants_change_only_the_loss_of_the_grpo_recipe():
    """`methods.py --only gspo ...` runs the shipped grpo recipe with TRL's loss settings changed (the recipe's
    `train` section is what TRL's GRPOConfig is built from)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import methods
    from lowtune.config import load_recipe

    cfg = {"grpo_extra": ["train.num_generations=2"]}
    assert methods.RECIPE["gspo"] == "grpo" and methods.method_overrides("gspo", cfg) == [
        "train.loss_type=grpo", "train.importance_sampling_level=sequence", "train.num_generations=2"]  # fmt: skip
    seen = {}
    for variant in methods.GRPO_VARIANTS:
        recipe = load_recipe(ROOT / "recipes" / "grpo.yaml", methods.method_overrides(variant, {}))
        seen[variant] = (recipe.train["loss_type"], recipe.train.get("importance_sampling_level", "token"))
    assert seen == {"grpo-loss-grpo": ("grpo", "token"), "grpo-loss-dr_grpo": ("dr_grpo", "token"),
                    "grpo-loss-dapo": ("dapo", "token"), "gspo": ("grpo", "sequence")}  # fmt: skip


def test_update_measures_again_into_results_of_the_same_settings_only(tmp_path):
    """`methods.py --update --only X` re-measures X into the recorded results: refused without them or with other
    settings (rows would not compare); a setting the results predate reads as unset; a row measured on another
    machine names it in the table."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import methods

    stem = tmp_path / "methods"
    cfg = {"model": "m", "n": 100, "minutes": 6.0, "steps": None, "set": [], "constant_lr": False}
    with pytest.raises(SystemExit, match="does not exist"):
        methods.earlier_report(stem, cfg)
    recorded = {"model": "m", "n": 100, "minutes": 6.0, "steps": None}  # before --set and --constant-lr existed
    row = {"accuracy_before": 0.21, "accuracy_after": 0.9, "minutes": 6.0, "steps": 9, "tokens": 1, "peak_memory_mb": 1,
           "trainable_params": 1}  # fmt: skip
    report = {"machine": {"cpu": "Xeon", "cores": 2}, "settings": recorded, "methods": {"sft": row}}
    stem.with_suffix(".json").write_text(json.dumps(report))
    assert methods.earlier_report(stem, cfg) == report
    with pytest.raises(SystemExit, match=r"other settings \(minutes, n\)"):
        methods.earlier_report(stem, {**cfg, "minutes": 8.0, "n": 50})
    report["methods"]["dpo"] = {**row, "machine": {"cpu": "EPYC", "cores": 2, "torch": "2.13.0+cpu"}}
    assert [r[0] for r in methods.table_rows(report)] == ["sft", "dpo (EPYC, 2 cores)"]


def test_merge_brings_rows_of_the_same_settings_into_one_table(tmp_path):
    """`methods.py --merge OTHER.json` copies OTHER's rows into the named results: refused when the settings
    differ; a row keeps the machine it was measured on (named in the table) and replaces a row of that method."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import methods

    settings = {"model": "m", "n": 100, "minutes": 6.0, "steps": None}
    row = {"accuracy_before": 0.21, "accuracy_after": 0.9, "minutes": 6.0, "steps": 9, "tokens": 1,
           "peak_memory_mb": 1, "trainable_params": 1, "curve": []}  # fmt: skip
    xeon, epyc = ({"cpu": cpu, "cores": 2, "torch": "2.13.0+cpu"} for cpu in ("Xeon", "EPYC"))
    stem = tmp_path / "methods"
    with pytest.raises(SystemExit, match="does not exist"):
        methods.merged(stem, [])
    recorded = {"sft": row, "kto": {**row, "accuracy_after": 0.3}}
    report = {"machine": xeon, "settings": settings, "base": {"accuracy": 0.21}, "methods": recorded}
    stem.with_suffix(".json").write_text(json.dumps(report))
    other = tmp_path / "toolbox.json"
    other.write_text(json.dumps({"machine": epyc, "settings": {**settings, "n": 50}, "methods": {"kto": row}}))
    with pytest.raises(SystemExit, match=r"other settings than .* \(n\)"):
        methods.merged(stem, [other])
    rows = {"kto": {**row, "accuracy_after": 0.65}, "orpo": row, "dpo": {**row, "machine": xeon}}
    toolbox = {"machine": epyc, "settings": settings, "methods": rows}
    other.write_text(json.dumps(toolbox))
    report = methods.merged(stem, [other])
    assert [r[:2] for r in methods.table_rows(report)] == [
        ["sft", "21% → 90%"], ["kto (EPYC, 2 cores)", "21% → 65%"], ["orpo (EPYC, 2 cores)", "21% → 90%"],
        ["dpo", "21% → 90%"],
    ]  # fmt: skip
    methods.write(stem, report)
    assert "kto (EPYC, 2 cores) | 21% → 65%" in stem.with_suffix(".md").read_text()
    assert stem.with_suffix(".png").stat().st_size > 0
