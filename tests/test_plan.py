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


# ---------------------------------------------------------------- rejection sampling and pipelines

SAMPLING = ["method=rejection_sampling", *TINY, "data.n_train=4", "rewards.format=1", "train.max_completion_length=48",
            "train.per_device_train_batch_size=2", "train.temperature=0.7"]  # fmt: skip


def full_length_right_replies(tokens: int):
    """Stands in for sampling: replies to "What is A + B?" that are right, well formed and `tokens` long, the
    longest a sample can be (the worst case the plan is for)."""

    def generate(model, tokenizer, prompts, max_new_tokens, **kwargs):
        def length(text):
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        replies = []
        for messages in prompts:
            a, b = map(int, messages[-1]["content"].removeprefix("What is ").removesuffix("?").split(" + "))
            answer = f"</think><answer>{a + b}</answer>"
            reply = next(r for n in range(tokens, 0, -1)
                         if length(r := "<think>" + plan._reply_of(tokenizer, n) + answer) <= tokens)  # fmt: skip
            assert length(reply) >= tokens - 2
            replies += [reply] * kwargs["num_return_sequences"]
        return replies

    return generate


def test_rejection_sampling_plans_sft_on_the_longest_samples(tmp_path, monkeypatch):
    """Its SFT step is planned on kept samples of max_completion_length tokens: within 10% of the real run's
    step when every kept sample is that long (the sampling kept small, so the step is the peak)."""
    from lowtune import evaluate

    small = ["train.sampling_batch_size=1", "train.num_generations=2"]
    predicted = plan.plan(load_recipe(None, [*SAMPLING, *small, f"output.dir={tmp_path}"]), device="cpu")
    assert "peak_phase" not in predicted.settings and predicted.settings["sampling_batch"] == 2
    assert "optimizer states" in {p.name for p in predicted.parts}
    assert any("train.max_completion_length=48" in note for note in predicted.notes)
    monkeypatch.setattr(evaluate, "generate", full_length_right_replies(48))
    callback = tensor_peak_callback(3)
    fit = training.fit

    def fit_measured(trainer, *args):
        trainer.add_callback(callback)
        return fit(trainer, *args)

    monkeypatch.setattr(training, "fit", fit_measured)
    recipes.train(load_recipe(None, [*SAMPLING, *small, f"output.dir={tmp_path}", "train.max_steps=3"]))
    measured = callback.peak / 2**20
    assert abs(predicted.tensor_peak_mb - measured) <= 0.10 * measured, (predicted.tensor_peak_mb, measured)
    # a longer sample is a longer row to train on
    longer = plan.plan(load_recipe(None, [*SAMPLING, *small, "train.max_completion_length=96"]), device="cpu")
    assert longer.length >= predicted.length + 48 and longer.tensor_peak_mb > predicted.tensor_peak_mb


def test_rejection_sampling_plans_its_sampling_without_the_optimizer(tmp_path, monkeypatch):
    """Many samples at once: the sampling is the peak, of the weights and the KV cache alone (the sampling model
    is freed before SFT makes its optimizer), within 10% of the real sampling's tensor peak when every sample runs
    to max_completion_length; fewer samples at once plan less."""
    from lowtune import evaluate, models
    from lowtune.plan.trace import PeakTracker
    from lowtune.recipes import rejection_sampling
    from lowtune.runs import RunDir

    many = load_recipe(None, [*SAMPLING, "train.sampling_batch_size=4", "train.num_generations=40"])
    predicted = plan.plan(many, device="cpu")
    assert predicted.settings["peak_phase"] == "generation" and predicted.settings["sampling_batch"] == 4 * 40
    names = [p.name for p in predicted.parts]
    assert "optimizer states" not in names and "generation: KV cache and logits" in names
    fewer = plan.plan(load_recipe(None, [*SAMPLING, "train.sampling_batch_size=2", "train.num_generations=40"]),
                      device="cpu")  # fmt: skip
    assert fewer.tensor_peak_mb < predicted.tensor_peak_mb

    model, tokenizer = models.load(many.model, many.lora)  # loaded before, held by the tracker as the plan holds it
    monkeypatch.setattr(rejection_sampling.models, "load", lambda *args, **kwargs: (model, tokenizer))
    generate, real = model.generate, evaluate.generate

    def full_length(model_, tokenizer_, prompts, max_new_tokens, **kwargs):  # no sample stops early
        model.generate = lambda **inputs: generate(**inputs, min_new_tokens=max_new_tokens)
        return real(model_, tokenizer_, prompts, max_new_tokens, **kwargs)

    monkeypatch.setattr(evaluate, "generate", full_length)
    run = RunDir(tmp_path / "sampled")
    run.path.mkdir()
    tracker = PeakTracker(fake=False)
    tracker.hold([*model.parameters(), *model.buffers()])
    with tracker, pytest.raises(LowtuneError, match="kept none"):  # tiny-random's samples are never right
        rejection_sampling.sample(many, run, None, recipes.trl_args(many, run))
    measured = tracker.peak / 2**20
    assert abs(predicted.tensor_peak_mb - measured) <= 0.10 * measured, (predicted.tensor_peak_mb, measured)

    # --fit samples fewer prompts at once, the most that fit: here 3, whose sampling plans less than the SFT step
    # that 2 plan (the step's peak is the same for any sampling), 4 being over it
    found = plan.fit(None, [*SAMPLING, "train.sampling_batch_size=4", "train.num_generations=40"],
                     fewer.total_mb + 0.5, device="cpu")  # fmt: skip
    assert "peak_phase" not in fewer.settings and fewer.settings["generation_peak_mb"] < fewer.tensor_peak_mb
    assert found.overrides == ["train.sampling_batch_size=3"] and found.plan.fits
    assert found.plan.settings["generation_peak_mb"] > fewer.settings["generation_peak_mb"]


PIPELINE = """\
model:
  name: tiny-random
data:
  n_train: 32
eval:
  task: null
output:
  quiet: true
stages:
  - method: sft
    train:
      max_steps: 1
      per_device_train_batch_size: 8
  - method: sft
    train:
      max_steps: 1
      per_device_train_batch_size: 2
"""


def test_a_pipeline_is_planned_stage_by_stage_and_peaks_at_its_largest(tmp_path):
    path = tmp_path / "pipe.yaml"
    path.write_text(PIPELINE)
    whole = plan.plan(load_recipe(path), device="cpu")
    assert [p.batch for p in whole.stages] == [8, 2] and whole.method == "pipeline"
    alone = plan.plan(load_recipe(path, ["stages.1.train.per_device_train_batch_size=2"]), device="cpu")
    assert alone.stages[0].tensor_peak_mb == pytest.approx(whole.stages[1].tensor_peak_mb, rel=1e-6)
    assert whole.stages[0].tensor_peak_mb > whole.stages[1].tensor_peak_mb  # each stage its own settings
    assert whole.total_mb == whole.stages[0].total_mb and whole.tensor_peak_mb == whole.stages[0].tensor_peak_mb
    # every stage of the shipped r1 (SFT, GRPO, rejection sampling) is planned
    r1 = plan.plan(recipe("r1", tmp_path, "stages.2.train.max_completion_length=16"), device="cpu", memory_mb=64 * 1024)
    assert [p.method for p in r1.stages] == ["sft", "grpo", "rejection_sampling"] and r1.fits


def test_fit_fits_each_stage_of_a_pipeline(tmp_path, capsys):
    path = tmp_path / "pipe.yaml"
    path.write_text(PIPELINE)
    whole = plan.plan(load_recipe(path), device="cpu")
    half = plan.plan(load_recipe(path, ["stages.1.train.per_device_train_batch_size=4"]), device="cpu")
    budget = (whole.stages[0].total_mb + half.stages[0].total_mb) / 2  # stage 1 fits at batch 4, stage 2 as it is
    assert whole.stages[1].total_mb < budget
    found = plan.fit(path, [], budget, device="cpu")
    assert found.overrides == ["stages.1.train.per_device_train_batch_size=4",
                               "stages.1.train.gradient_accumulation_steps=2"]  # fmt: skip
    assert found.plan.fits and [p.batch for p in found.plan.stages] == [4, 2]
    with pytest.raises(LowtuneError, match=r"stage 1 \(sft\) does not fit in 0\.10 GiB"):
        plan.fit(path, [], 0.1 * 1024, device="cuda")
    # the command line: the stages' table, and train --fit records the pipeline's plan in its summary.json
    assert main(["plan", str(path), "--memory", "64GiB"]) == 0
    out = capsys.readouterr().out
    assert "a pipeline of 2 stages" in out and "stage 1 (sft), the largest" in out and "fits in 64.00 GiB" in out
    runs = tmp_path / "runs"
    assert main(["train", str(path), f"output.dir={runs}", "--fit", "64GiB"]) == 0
    summary = json.loads((runs / "pipe" / "summary.json").read_text())
    assert summary["plan"]["fits"] is True and [s["batch"] for s in summary["plan"]["stages"]] == [8, 2]
    assert summary["plan"]["measured_tensor_peak_mb"] is None  # measured on CUDA only


@pytest.mark.parametrize("n, prompt, new", [(128, 40, 48), (16, 20, 400)])
def test_the_generation_plan_follows_the_kv_cache_to_the_last_token(n, prompt, new):
    """Within 10% of transformers' generate's tensor peak where the prefill is the peak (128 × 40 tokens, 48 new)
    and where the KV cache outgrows it (16 × 20, 400 new): the decode steps are extrapolated, not the prefill."""
    from lowtune import models

    r = load_recipe(None, ["method=rejection_sampling", "model.name=tiny-random"])
    model, _ = models.load(r.model, r.lora)
    model.eval()

    def holding():
        from lowtune.plan.trace import PeakTracker

        tracker = PeakTracker(fake=False)
        tracker.hold([*model.parameters(), *model.buffers()])
        return tracker

    planned = plan._generation(model, holding(), n, prompt, new)
    real = holding()
    ids = torch.randint(5, 300, (n, prompt), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), real:
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=True, pad_token_id=0)  # fmt: skip
    assert abs(planned - real.peak) <= 0.10 * real.peak, (planned / 2**20, real.peak / 2**20)
