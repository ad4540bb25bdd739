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
