"""Hostile input: malformed recipes, overrides and data files end in one LowtuneError, never a traceback or a hang."""

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lowtune.config import load_recipe
from lowtune.data import load, load_pairs
from lowtune.errors import LowtuneError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

KEYS = [
    "method", "model", "lora", "data", "train", "eval", "output", "rewards", "name", "r", "source", "format",
    "max_steps", "learning_rate", "loss_type", "heldout", "bad_rows", "quantization", "digits", "operands",
]  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["sft", "grpo", "dpo", "reward", "nf4", "auto", "arithmetic", "+", "1e-3", "[a, b]"]),
)  # fmt: skip
yaml_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def accepted_or_lowtune_error(call):
    try:
        return call()
    except LowtuneError as e:
        assert str(e).strip(), "a LowtuneError must say what went wrong"
        return None


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), yaml_values, max_size=6))
def test_recipe_structures(tmp_path_factory, raw):
    import yaml

    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    accepted_or_lowtune_error(lambda: load_recipe(path))


@FUZZ
@given(st.text(max_size=200))
@example(text="?")  # a YAML complex key: {None: None} (found by this test; it crashed the "did you mean")
def test_recipe_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_text(text, encoding="utf-8")
    accepted_or_lowtune_error(lambda: load_recipe(path))


@FUZZ
@given(st.lists(st.text(max_size=40), max_size=4))
def test_overrides(overrides):
    accepted_or_lowtune_error(lambda: load_recipe(None, overrides))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["role", "content", "text", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)
rows = st.dictionaries(
    st.sampled_from(["messages", "prompt", "completion", "text", "answer", "question", "chosen", "rejected", "x"]),
    json_values,
    min_size=1,
    max_size=4,
)


def write_lines(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@FUZZ
@given(st.lists(rows, min_size=1, max_size=5), st.sampled_from(["sft", "prompt", "pairs"]))
def test_data_rows(tmp_path_factory, data, kind):
    path = write_lines(tmp_path_factory, [json.dumps(r) for r in data])
    method = {"sft": "sft", "prompt": "grpo", "pairs": "dpo"}[kind]
    recipe = load_recipe(None, [f"method={method}", f"data.source={path}", "data.heldout=0"])
    if kind == "pairs":
        accepted_or_lowtune_error(lambda: load_pairs(recipe.data))
    else:
        accepted_or_lowtune_error(lambda: load(recipe.data, kind=kind))


@FUZZ
@given(st.lists(st.text(max_size=60), min_size=1, max_size=5))
def test_data_lines(tmp_path_factory, lines):
    path = write_lines(tmp_path_factory, lines)
    recipe = load_recipe(None, [f"data.source={path}"])
    accepted_or_lowtune_error(lambda: load(recipe.data))


@pytest.mark.parametrize("suffix", [".json", ".csv", ".jsonl.gz", ".parquet"])
@FUZZ
@given(payload=st.binary(max_size=200))
def test_data_file_bytes(tmp_path_factory, suffix, payload):
    path = tmp_path_factory.mktemp("fuzz") / f"data{suffix}"
    path.write_bytes(payload)
    recipe = load_recipe(None, [f"data.source={path}"])
    accepted_or_lowtune_error(lambda: load(recipe.data))


# The CLI's model and run arguments: every command that takes one, with random strings and paths.
CLI = {
    "generate": lambda name: ["generate", "--prompt", "hi", "--", name],
    "eval": lambda name: ["eval", "--n", "1", "--", name],
    "augment": lambda name: ["augment", "--n", "1", "--out", "augmented.jsonl", "--", name],
    "score": lambda name: ["score", "--text", "hi", "--", name],
    "merge": lambda name: ["merge", "--out", "merged", "--", name],
    "export": lambda name: ["export", "--", name],
    "train": lambda name: ["train", "sft", f"model.name={name}", "output.dir=runs"],
}
PREFIXES = ["", "runs/", "runs/sft", "./", "../", "/", "~/", "~", "org/", "adapter/", "lowtune-tests/"]
names = st.builds(lambda prefix, text: prefix + text, st.sampled_from(PREFIXES), st.text(max_size=40))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(CLI)), names)
@example("generate", "runs/[/x]")  # rich markup in a path: printing the error line itself crashed
@example("export", "org/name")  # a hub id (offline here)
@example("augment", "~\x00")  # expanduser raised ValueError (found by this test)
def test_cli_model_and_run_arguments(tmp_path, monkeypatch, capsys, command, name):
    """A model or run argument that names nothing usable ends in one error line (exit 2), never a traceback,
    and leaves no run directory."""
    from lowtune.cli import main

    monkeypatch.chdir(tmp_path)  # relative names land here: nothing to find, nothing real to touch
    (tmp_path / "runs" / "sft").mkdir(parents=True, exist_ok=True)  # a run that never finished
    (tmp_path / "adapter").mkdir(exist_ok=True)
    (tmp_path / "adapter" / "adapter_config.json").write_text("{")  # a damaged adapter
    capsys.readouterr()
    assert main(CLI[command](name)) == LowtuneError.exit_code
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and all(line.startswith("lowtune:") for line in lines[:-1]), out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["sft"]
