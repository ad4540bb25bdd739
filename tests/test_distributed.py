"""Data-parallel training on one CPU: two processes (torchrun, gloo) against one process with the
same effective batch. Rows are fed in order (train_sampling_strategy=sequential) so the two runs see the
same global batches; each process's rows are recorded by tests/ddp_probe.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lowtune import dist

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("ddp_probe.py")
STEPS = 3


def common(method: str, out: Path, batch: int) -> list[str]:
    args = [
        method, "model.name=tiny-random", f"train.max_steps={STEPS}", f"train.per_device_train_batch_size={batch}",
        "train.train_sampling_strategy=sequential", "train.logging_steps=1", "train.save_steps=2",
        "train.learning_rate=1e-3", "train.warmup_steps=0", "train.lr_scheduler_type=constant",
        "data.n_train=64", "eval.n=4", "eval.max_new_tokens=4", f"output.dir={out}", "--quiet",
    ]  # fmt: skip
    if method == "dpo":
        args += ["train.loss_type=[sigmoid]", "train.precompute_ref_log_probs=false"]
    return args


def launch(tmp_path: Path, method: str, processes: int, batch: int) -> tuple[Path, Path, str]:
    out = tmp_path / f"{method}-{processes}x{batch}"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # torchrun: on a CPU, accelerate launch starts a single process (several need MPI)
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    cmd = [*head, str(PROBE)] if processes > 1 else [sys.executable, str(PROBE)]
    proc = subprocess.run([*cmd, str(out), *common(method, out, batch)], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # one run directory, made by the main process
    return runs[0], out, proc.stdout


def rows(out: Path, rank: int) -> dict[int, list]:
    lines = [json.loads(line) for line in (out / f"rows-rank{rank}.jsonl").read_text().splitlines()]
    return {r["step"]: r["rows"] for r in lines}


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_two_processes_train_like_one_with_the_same_effective_batch(tmp_path, tiny_path, method):
    two, two_out, stdout = launch(tmp_path, method, processes=2, batch=2)
    one, one_out, _ = launch(tmp_path, method, processes=1, batch=4)

    # Each rank trains on its own half of every global batch; together they are the one-process batch.
    rank0, rank1, single = rows(two_out, 0), rows(two_out, 1), rows(one_out, 0)
    assert sorted(rank0) == sorted(rank1) == sorted(single) == list(range(STEPS))
    per = 2 if method == "sft" else 4  # DPO stacks chosen and rejected
    for step in range(STEPS):
        assert len(rank0[step]) == len(rank1[step]) == per
        assert not any(r in rank1[step] for r in rank0[step])  # different data
        assert sorted(map(tuple, rank0[step] + rank1[step])) == sorted(map(tuple, single[step]))

    # Only the main process wrote: one summary, each step logged once, one progress report.
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == STEPS

    def logged(run):
        return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert logged(two) == logged(one)  # not once per process
    assert stdout.count("run directory") == 1
    assert summary["eval_after"] is not None  # scored on the main process

    # Same effective batch, same data, same start: the same adapter (gradients averaged over ranks), up to
    # float summation order, which Adam amplifies where a gradient is near zero: compare whole tensors.
    a, b = adapter(two), adapter(one)
    assert a.keys() == b.keys()
    assert all(a[k].abs().max() > 0 for k in a if "lora_B" in k)  # lora_B starts at zero: training moved it
    assert max(relative(a[k], b[k]) for k in a) < 1e-4
    # ... while half the batch in one process (other data per step) ends far from it: the check can fail.
    half, _, _ = launch(tmp_path, method, processes=1, batch=2)
    c = adapter(half)
    assert max(relative(c[k], b[k]) for k in c) > 1e-2


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def relative(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


@pytest.mark.parametrize("method", ["reward", "grpo", "rloo", "kto", "orpo", "online_dpo"])
def test_each_method_trains_in_two_processes(tmp_path, tiny_path, method):
    sampling = ["train.max_completion_length=8", "train.num_generations=2"]
    extra = {
        "reward": ["data.source=arithmetic", "data.data_dir=null", "data.max_rows=null", "data.heldout=null",
                   "data.bad_rows=error"],
        "grpo": sampling, "rloo": sampling, "kto": [], "orpo": [], "online_dpo": ["train.max_new_tokens=8"],
    }[method]  # fmt: skip
    out = tmp_path / method
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(PROBE), str(out),
           *common(method, out, 2)[:-1], "train.max_steps=2", *extra, "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert rows(out, 0).keys() == rows(out, 1).keys() == {0, 1}  # both processes trained every step
    if method == "reward":
        assert summary["pairwise_after"]["n"] > 0
        assert all(not set(map(tuple, rows(out, 0)[s])) & set(map(tuple, rows(out, 1)[s])) for s in (0, 1))
    else:
        assert summary["eval_after"] is not None


def test_ppo_and_augmentation_refuse_several_processes(monkeypatch, tmp_path):
    from lowtune.errors import LowtuneError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert dist.distributed() and not dist.is_main()
    with pytest.raises(LowtuneError, match="PPO .* runs in one process.*2 processes"):
        dist.refuse("PPO (lowtune train ppo)")
    from lowtune.cli import main

    code = main(["augment", "tiny-random", "--out", str(tmp_path / "aug.jsonl")])
    assert code != 0 and not (tmp_path / "aug.jsonl").exists()


def test_num_processes_builds_the_accelerate_command(monkeypatch):
    import lowtune.cli as cli

    calls = []
    monkeypatch.setattr("subprocess.call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["train", "sft", "--num-processes", "2", "train.max_steps=5", "--quiet"]) == 0
    (cmd,) = calls
    if torch.cuda.is_available():
        assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
        assert cmd[cmd.index("--num_processes") + 1] == "2"
    else:  # CPU processes with gloo: torchrun (accelerate launch --cpu would start one)
        assert cmd[1:3] == ["-m", "torch.distributed.run"]
        assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert cmd[cmd.index("lowtune") - 1 :] == ["-m", "lowtune", "train", "sft", "train.max_steps=5", "--quiet"]


def test_shipped_accelerate_configs_load_and_are_not_recipes():
    from accelerate.commands.config.config_args import load_config_from_file

    from lowtune.recipes import shipped_recipes

    configs = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
    kinds = {p.stem: str(load_config_from_file(str(p)).distributed_type) for p in configs}
    assert kinds == {
        "ddp": "DistributedType.MULTI_GPU",
        "fsdp-qlora": "DistributedType.FSDP",
        "deepspeed-zero2": "DistributedType.DEEPSPEED",
        "deepspeed-zero3": "DistributedType.DEEPSPEED",
    }
    assert not any(name.startswith("accelerate/") for name in shipped_recipes())
    assert "sft" in shipped_recipes()


def test_fsdp_and_zero3_launches_are_detected_as_sharded(monkeypatch):
    assert not dist.sharded()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert dist.sharded()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert not dist.sharded()
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert dist.sharded()


@pytest.mark.parametrize("method", ["sft", "grpo", "reward", "dpo", "ppo"])
def test_trl_arguments_exist_before_the_model_loads(method, tmp_path, tiny_path, monkeypatch):
    """ZeRO-3 (recipes/accelerate/deepspeed-zero3.yaml, zero3_init_flag) partitions the weights at load time only
    if the DeepSpeed config is registered before `from_pretrained`, and creating the TRL arguments registers it.
    DeepSpeed cannot be installed on this offline machine, so this checks that order for every method; the
    partitioning itself has not been run."""
    from lowtune import models, recipes, training
    from lowtune.config import load_recipe

    order = []
    real = training.trl_args
    monkeypatch.setattr(training, "trl_args", lambda *a: order.append("arguments") or real(*a))

    class Loading(Exception):
        pass

    def load(*args, **kwargs):
        order.append("model")
        raise Loading

    monkeypatch.setattr(models, "load", load)
    path = recipes.shipped_recipes()[method]
    recipe = load_recipe(path, ["model.name=tiny-random", f"output.dir={tmp_path}", "output.quiet=true"])
    with pytest.raises(Loading):
        recipes.train(recipe)
    assert order == ["arguments", "model"]
    assert not any(tmp_path.iterdir())  # and the run that never saved left no directory
