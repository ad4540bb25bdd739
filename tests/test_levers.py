"""The speed levers (lowtune/levers.py): which lowtune turns on, which it turns off and says why, and that each
reaches the method's TRL config class."""

import dataclasses

import pytest

from lowtune import levers, recipes
from lowtune.config import load_recipe, train_config_class
from lowtune.runs import RunDir


def everything(package: str) -> bool:
    return True


def nothing(package: str) -> bool:
    return False


@pytest.mark.parametrize("field", sorted(levers.LEVERS))
def test_every_lever_is_a_field_of_each_of_its_methods_trl_config(field):
    for method in levers.LEVERS[field].methods:
        assert field in {f.name for f in dataclasses.fields(train_config_class(method))}, (field, method)


def test_no_lever_is_on_by_default_until_a_gpu_measured_it():
    assert levers.CUDA_DEFAULTS == {}  # each entry needs its figure in benchmarks/results/throughput_cuda.md
    assert all(levers.defaults(m, "cuda", everything) == {} for m in ("sft", "dpo", "grpo"))


def test_defaults_are_the_measured_winners_on_cuda_only_and_only_when_installed(monkeypatch):
    monkeypatch.setattr(levers, "CUDA_DEFAULTS", {"sft": ("use_liger_kernel", "padding_free"),
                                                  "grpo": ("cache_implementation",)})  # fmt: skip
    assert levers.defaults("sft", "cuda", everything) == {"use_liger_kernel": True, "padding_free": True}
    assert levers.defaults("sft", "cuda", nothing) == {"padding_free": True}  # Liger's package is missing
    assert levers.defaults("grpo", "cuda", nothing) == {"cache_implementation": "static"}
    assert levers.defaults("sft", "cpu", everything) == {} and levers.defaults("sft", "mps", everything) == {}
    assert levers.defaults("dpo", "cuda", everything) == {}  # nothing measured for this method


def test_a_lever_this_machine_cannot_run_is_turned_off_with_a_line_saying_why():
    settings = {"use_liger_kernel": True, "padding_free": True, "learning_rate": 1e-4}
    kept, notes = levers.usable(settings, "cuda", everything)
    assert kept == settings and notes == []
    off, notes = levers.usable(settings, "cuda", nothing)
    assert off == {**settings, "use_liger_kernel": False}
    assert notes == ["train.use_liger_kernel: off, the liger_kernel package is not installed (pip install "
                     "'lowtune[gpu]'); training without it"]  # fmt: skip
    off, notes = levers.usable({**settings, "activation_offloading": True}, "cpu", everything)
    assert off["use_liger_kernel"] is False and off["activation_offloading"] is False and off["padding_free"] is True
    assert notes == ["train.use_liger_kernel: off, it needs a CUDA device (this run is on cpu); training without it",
                     "train.activation_offloading: off, it needs a CUDA device (this run is on cpu); training without "
                     "it"]  # fmt: skip
    assert levers.usable({"use_liger_kernel": False}, "cpu", nothing) == ({"use_liger_kernel": False}, [])


def test_the_recipe_sets_a_lever_over_the_default_and_a_fallback_reaches_trl(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(levers, "defaults", lambda method, device_type: {"padding_free": True})
    run = RunDir(tmp_path)
    args = recipes.trl_args(load_recipe(None, ["model.name=tiny-random"]), run)
    assert args.padding_free is True  # the default reaches TRL's SFTConfig
    recipe = load_recipe(None, ["model.name=tiny-random", "train.padding_free=false", "train.use_liger_kernel=true"])
    args = recipes.trl_args(recipe, run)
    assert args.padding_free is False and args.use_liger_kernel is False  # the recipe's choice; Liger needs CUDA
    assert "train.use_liger_kernel: off" in capsys.readouterr().out
