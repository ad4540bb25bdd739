"""`lowtune plan` and `--fit`: predictions traced on fake tensors against the same tracker on real tensors."""

import json

import pytest
import torch

from lowtune import plan, recipes, training
from lowtune.cli import main
from lowtune.config import load_recipe
from lowtune.errors import LowtuneError
from lowtune.plan.trace import tensor_peak_callback

TINY = ["model.name=tiny-random", "data.n_train=32", "eval.task=null", "output.quiet=true"]


def recipe(method, tmp_path, *extra):
    return load_recipe(recipes.find_recipe(method), [*TINY, f"output.dir={tmp_path}", *extra])


def measured_peak(method, tmp_path, *extra) -> float:
    """The tensor peak (MiB) of the first three steps of the real run, traced on its real tensors."""
    callback = tensor_peak_callback(3)
    fit = training.fit

    def fit_measured(trainer, *args):
        trainer.add_callback(callback)
        return fit(trainer, *args)

    training.fit = fit_measured
    try:
        recipes.train(recipe(method, tmp_path, "train.max_steps=3", "train.save_steps=1000", *extra))
    finally:
        training.fit = fit
    return callback.peak / 2**20


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo", "ppo", "kto", "orpo", "rloo"])
def test_prediction_is_within_ten_percent_of_the_real_tensor_peak(method, tmp_path):
    short = ["train.max_completion_length=16"] if method in ("grpo", "rloo") else []  # shorter sampling, same plan
    predicted = plan.plan(recipe(method, tmp_path, *short), device="cpu")
    # the plan is GRPO's worst step, where every completion has signal: the run measured loses none to the skip
    every = ["train.skip_zero_advantage=false"] if method == "grpo" else []
    measured = measured_peak(method, tmp_path, *short, *every)
    assert abs(predicted.tensor_peak_mb - measured) <= 0.10 * measured, (predicted.tensor_peak_mb, measured)
    # the parts add up: each is a share of the peak, none negative, and the total adds the process itself
    assert all(p.mb >= 0 for p in predicted.parts + predicted.overheads)
    assert predicted.tensor_peak_mb == pytest.approx(sum(p.mb for p in predicted.parts))
    assert predicted.total_mb == pytest.approx(predicted.tensor_peak_mb + sum(p.mb for p in predicted.overheads))


def test_base_weights_are_the_bytes_of_the_loaded_model(tmp_path):
    from lowtune import models

    r = recipe("sft", tmp_path)
    p = plan.plan(r, device="cpu")
    model, _ = models.load(r.model, r.lora)
    frozen = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]
              if not t.requires_grad}  # fmt: skip
    trainable = sum(t.numel() * t.element_size() for t in model.parameters() if t.requires_grad)
    parts = {part.name: part.mb for part in p.parts}
    assert parts["base weights"] == pytest.approx(sum(frozen.values()) / 2**20, rel=1e-3)
    assert parts["LoRA weights"] == pytest.approx(trainable / 2**20, rel=1e-3)
    assert parts["optimizer states"] == pytest.approx(2 * trainable / 2**20, rel=1e-3)  # AdamW: two moments


def test_nf4_weights_are_the_bytes_bitsandbytes_stores(tmp_path):
    """The planned NF4 base is what bitsandbytes keeps for the same model: packed weights, absmax, code books."""
    pytest.importorskip("bitsandbytes")
    from lowtune import models

    r = recipe("sft", tmp_path, "model.quantization=nf4", "model.dtype=bfloat16")
    p = plan.plan(r, device="cpu")
    model, _ = models.load(r.model)
    seen = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.data_ptr()] = t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)
        if state is not None:
            for q in (state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code):
                seen[q.data_ptr()] = q.numel() * q.element_size()
    base = next(part.mb for part in p.parts if part.name.startswith("base weights"))
    assert base == pytest.approx(sum(seen.values()) / 2**20, rel=0.02)


def test_a_longer_row_raises_the_plan_and_cut_rows_are_counted(tmp_path):
    rows = [{"prompt": "What is 1 + 1?", "completion": "2"}] * 16
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps(r) + "\n" for r in rows))
    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"prompt": "Tell me. " * 60, "completion": "No."}]))
    a = plan.plan(recipe("sft", tmp_path, f"data.source={short}"), device="cpu")
    b = plan.plan(recipe("sft", tmp_path, f"data.source={long}"), device="cpu")
    assert b.length > 4 * a.length and b.tensor_peak_mb > a.tensor_peak_mb
    assert a.cut_rows == 0 and b.cut_rows == 0
    c = plan.plan(recipe("sft", tmp_path, f"data.source={long}", "train.max_length=64"), device="cpu")
    assert c.cut_rows == 1 and c.length <= 64


def test_fit_keeps_the_effective_batch(tmp_path):
    path = recipes.find_recipe("sft")
    overrides = [*TINY, f"output.dir={tmp_path}", "train.per_device_train_batch_size=8"]
    full = plan.plan(load_recipe(path, overrides), device="cpu")
    half = plan.plan(load_recipe(path, [*overrides, "train.per_device_train_batch_size=4"]), device="cpu")
    budget = (full.total_mb + half.total_mb) / 2  # batch 4 fits, batch 8 does not
    found = plan.fit(path, overrides, budget, device="cpu")
    assert found.overrides == ["train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2"]
    assert found.plan.fits and found.plan.total_mb <= budget


def test_fit_keeps_grpo_groups_whole(tmp_path):
    path = recipes.find_recipe("grpo")
    overrides = [*TINY, f"output.dir={tmp_path}", "train.per_device_train_batch_size=16", "train.num_generations=8",
                 "train.gradient_accumulation_steps=1", "train.steps_per_generation=1"]  # fmt: skip
    full = plan.plan(load_recipe(path, overrides), device="cpu")
    found = plan.fit(path, overrides, full.total_mb - 0.5, device="cpu")  # just too little for 16
    batch = found.plan.settings["per_device_train_batch_size"]
    accumulation = found.plan.settings["gradient_accumulation_steps"]
    assert batch < 16 and batch * accumulation == 16 and batch % 8 == 0  # whole groups of 8 completions


def test_a_recipe_that_fits_is_left_unchanged(tmp_path):
    found = plan.fit(recipes.find_recipe("sft"), [*TINY, f"output.dir={tmp_path}"], 64 * 1024, device="cpu")
    assert found.overrides == [] and found.plan.fits


def test_an_impossible_budget_names_the_smallest_change(tmp_path):
    with pytest.raises(LowtuneError, match=r"does not fit in 0\.10 GiB .*LoRA rank 8 \(lora\.r=8\): \d+\.\d+ GiB"):
        plan.fit(recipes.find_recipe("sft"), [*TINY, f"output.dir={tmp_path}"], 0.1 * 1024, device="cuda")


def test_cli_plan_and_train_fit(tmp_path, capsys):
    assert main(["plan", "sft", *TINY, "--memory", "64GiB"]) == 0
    out = capsys.readouterr().out
    assert "tensor peak" in out and "fits in 64.00 GiB" in out
    assert main(["plan", "sft", *TINY, "--fit"]) == 2
    assert "--fit needs the memory" in capsys.readouterr().out
    assert main(["plan", "sft", *TINY, "--gpu", "rtx9999"]) == 2
    runs = tmp_path / "runs"
    assert main(["train", "sft", *TINY, f"output.dir={runs}", "train.max_steps=2", "--fit", "64GiB"]) == 0
    summary = json.loads((runs / "sft" / "summary.json").read_text())
    assert summary["plan"]["overrides"] == [] and summary["plan"]["fits"] is True
    assert summary["plan"]["measured_tensor_peak_mb"] is None  # measured on CUDA only (max_memory_allocated)


def test_memory_sizes_and_gpu_names():
    from lowtune.plan import budget

    assert budget.parse_memory("8GiB") == budget.parse_memory("8 GB") == budget.parse_memory("8192MiB") == 8192
    assert budget.gpu_memory("RTX 4060") == 8 * 1024
    with pytest.raises(LowtuneError, match="did you mean rtx4090"):
        budget.gpu_memory("rtx4900")
    with pytest.raises(LowtuneError, match="give a size"):
        budget.parse_memory("lots")


def test_the_tracker_sees_what_a_real_step_allocates():
    from lowtune.plan.trace import PeakTracker

    with PeakTracker(fake=False) as tracker:
        a = torch.zeros(1024, 256)  # 1 MiB
        b = a * 2  # 1 MiB more
        del a
        c = b + 1  # a is gone: still 2 MiB at most
        del b, c
    assert tracker.peak == 2 * 2**20 and tracker.current == 0
