"""Tools: the calculator on a table and against hostile input, calendar, BM25 search, and how tools are run
and loaded. Tool arguments are fuzzed (hypothesis): every input ends in a result or None, quickly."""

import datetime as dt
import json
import subprocess
import sys
import time
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lowtune.errors import LowtuneError
from lowtune.tools import Calculator, Calendar, Search, calculator, load_tool, run_tool

FUZZ = settings(max_examples=300, deadline=1000)


@pytest.mark.parametrize(
    "expression, result",
    [
        ("400 / 1400", "0.29"),
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("10 - 2 - 3", "5"),  # left-associative
        ("100 / 10 / 5", "2"),
        ("-3 + 5", "2"),
        ("-(2 + 3) * 2", "-10"),
        ("2.5 * 4", "10"),
        ("0.1 + 0.2", "0.3"),  # exact, not 0.30000000000000004
        ("1,234 + 766", "2000"),
        ("1,234.5 * 2", "2469"),
        ("12 × 3 − 4 ÷ 2", "34"),
        ("2 / 3", "0.67"),
        ("1 / 8", "0.13"),  # half-up
        ("-1 / 8", "-0.13"),
        ("0.001", "0"),
        ("1 / 0", None),
        ("5 / (3 - 3)", None),
    ],
)
def test_calculator_table(expression, result):
    assert calculator(expression) == result


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')", "x + 1", "(1).real", "abs(-1)", "2 ** 10", "2 ^ 3", "[1, 2]",
        "[i for i in range(3)]", "lambda: 1", "1 if 1 else 2", "1 < 2", "'a' * 3", "1e400", "0x10",
        "9" * 16, "1" * 10_000, "(" * 1000 + "1" + ")" * 1000, "-" * 1000 + "1", "1 +", "", "   ",
        "999999999999999 * 999999999999999", "2 * " * 60 + "2",
    ],
)  # fmt: skip
def test_calculator_rejects_quickly(expression):
    start = time.perf_counter()
    assert calculator(expression) is None
    assert time.perf_counter() - start < 0.1


@FUZZ
@given(st.text(max_size=400))
def test_calculator_never_raises_on_any_text(text):
    result = calculator(text)
    assert result is None or Fraction(result) is not None


def expressions():
    numbers = st.integers(min_value=-999, max_value=999).map(str) | st.decimals(
        min_value=-999, max_value=999, places=2, allow_nan=False, allow_infinity=False
    ).map(str)
    return st.recursive(
        numbers,
        lambda inner: st.tuples(inner, st.sampled_from("+-*/"), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        max_leaves=8,
    )


@FUZZ
@given(expressions())
# every intermediate value counts: 999^6 is over the bound though the result, 999^4, is not
@example("((999 * ((999 * 999) * (999 * 999))) * 999) / (999 * 999)")
@example("((999 * 999) * (999 * 999)) * 999.99")  # just under 10^15 at the end: kept
def test_calculator_agrees_with_exact_arithmetic(expression):
    exact = _exact(expression)
    got = calculator(expression)
    if exact is None:
        assert got is None
    else:
        assert got is not None and abs(Fraction(got) - exact) <= Fraction(1, 200)


def _exact(expression: str):
    """The reference: Python's parser over Fractions (test-only; the calculator never evals), with the
    calculator's documented bound: any intermediate or final value above 10^15 in magnitude gives None."""
    import ast

    def walk(node):
        if isinstance(node, ast.Constant):
            return Fraction(ast.get_source_segment(expression, node))
        if isinstance(node, ast.UnaryOp):
            return -walk(node.operand)
        left, right = walk(node.left), walk(node.right)
        op = type(node.op)
        if op is ast.Div and right == 0:
            raise ZeroDivisionError
        value = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}.get(op)
        value = left / right if value is None else value
        if abs(value) > 10**15:
            raise OverflowError
        return value

    try:
        return walk(ast.parse(expression, mode="eval").body)
    except (ZeroDivisionError, OverflowError):
        return None


def test_calculator_tool_calls_compute_and_use_what_was_said():
    calculator = Calculator()
    assert calculator("13780") is None and calculator("-5") is None  # a call must compute something
    assert calculator("26 * 530") == "13780"
    assert Calculator.usable("26 * 530", "Tom bought 26 packs of 530 shells, which makes")
    assert not Calculator.usable("13780 / 530", "Tom bought ")  # 13780 is only written later
    assert Calculator.usable("1,200 / 3", "1200 eggs in 3 boxes")


def test_tools_is_a_leaf_package():
    """lowtune.tools imports nothing of lowtune but its error type (Toolformer builds on it, not the reverse)."""
    code = (
        "import json, sys, lowtune; before = set(sys.modules); import lowtune.tools; "
        "print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith('lowtune'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert "lowtune.tools.calculator" in loaded and all(m.startswith("lowtune.tools") for m in loaded), loaded


def test_calendar():
    tool = Calendar(dt.date(2023, 1, 30))
    assert tool("") == "Today is Monday, January 30, 2023."
    assert tool("2024-02-29") == "Today is Thursday, February 29, 2024."
    assert tool("2023-02-30") is None and tool("next tuesday") is None and tool("9" * 100) is None


@FUZZ
@given(st.text(max_size=100))
def test_calendar_never_raises(text):
    result = Calendar(dt.date(2023, 1, 30))(text)
    assert result is None or result.startswith("Today is ")


def test_search_finds_the_matching_passage(tmp_path):
    tool = Search()
    assert "Paris" in tool("What is the capital of France?")
    assert "Everest" in tool("highest mountain")
    assert tool("zzzz qqqq") is None
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"text": "Lowtune trains adapters."}) + "\n" + json.dumps({"text": "Cats purr."}) + "\n"
    )
    assert Search(corpus)("what trains adapters") == "Lowtune trains adapters."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(LowtuneError, match=r"bad.jsonl:2: each row needs a \"text\" string"):
        Search(bad)
    with pytest.raises(LowtuneError, match="not found"):
        Search(tmp_path / "missing.txt")


@FUZZ
@given(st.text(max_size=400))
def test_search_never_raises(text):
    result = Search()(text)
    assert result is None or result in Search().passages


def test_run_tool_turns_failures_into_none():
    def boom(arg):
        raise RuntimeError("tool crashed")

    def slow(arg):
        time.sleep(1.0)
        return "late"

    assert run_tool(load_tool("calculator"), "2 + 2") == "4"
    assert run_tool(boom, "x") is None
    assert run_tool(lambda arg: 42, "x") is None  # not a string
    start = time.perf_counter()
    assert run_tool(slow, "x", time_limit=0.1) is None
    assert time.perf_counter() - start < 0.5
    assert len(run_tool(lambda arg: "y" * 10_000, "x")) == 500


class Weather:
    name = "Weather"
    description = "Always sunny."
    examples = [("It is warm.", "It is [Weather() -> sunny] warm.")]

    def __call__(self, arg):
        return "sunny"


def test_load_tool():
    assert load_tool("calculator").name == "Calculator"
    assert load_tool("Search").name == "WikiSearch"
    assert run_tool(load_tool("tests.test_tools:Weather"), "") == "sunny"
    with pytest.raises(LowtuneError, match="did you mean calculator"):
        load_tool("calculater")
    with pytest.raises(LowtuneError, match="cannot import"):
        load_tool("no_such_module_xyz:Tool")
    with pytest.raises(LowtuneError, match="has no attribute"):
        load_tool("tests.test_tools:Nothing")
    with pytest.raises(LowtuneError, match="lacks name, description, examples"):
        load_tool("tests.test_tools:time")


@settings(max_examples=200, deadline=2000)
@given(st.text(max_size=60))
def test_load_tool_fuzzed_specs_end_in_a_tool_or_a_lowtune_error(spec):
    try:
        tool = load_tool(spec)
    except LowtuneError:
        return
    assert callable(tool) and tool.name
