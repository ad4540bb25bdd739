"""The calculator tool: arithmetic on a whitelisted syntax tree, never `eval`.

`Calculator` is the tool (its name, description and few-shot examples, and what steers Toolformer's
augmentation: a result precedes a number, and a call uses only numbers already written); a call must
compute something. `calculator` is the arithmetic itself:

`calculator("400 / 1400")` -> "0.29". Understands + - * / (also × ÷ −), parentheses, unary minus,
decimals and thousands separators ("1,234.5"). The value is computed exactly (fractions) and rounded
half-up to 2 decimals, trailing zeros dropped. Anything else — names, attributes, calls, powers,
comprehensions — and anything too large (input length, nesting depth, digits per number, the size of
any intermediate result), or a division by zero, gives None: a failed call, never an exception.
"""

from __future__ import annotations

import ast
import re
from decimal import ROUND_HALF_UP, Context, Decimal
from fractions import Fraction

MAX_LENGTH = 200  # characters of input
MAX_DEPTH = 20  # nested parentheses / unary signs
MAX_DIGITS = 15  # digits in one number
MAX_MAGNITUDE = Fraction(10) ** 15  # any intermediate or final value

_SYMBOLS = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-"})
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])")
_ALLOWED = re.compile(r"[\d\s+\-*/().]*")
_DIGITS = re.compile(r"[\d.]+")
# for Calculator: a number as written in text, and an operation between two operands
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_OPERATION = re.compile(r"[\d.)]\s*[-+*/×÷]\s*[-(\d.]")
_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def calculator(expression: str) -> str | None:
    """Compute an arithmetic expression: + - * / and parentheses on numbers, rounded to 2 decimals.

    Args:
        expression: The expression, e.g. "400 / 1400".
    """
    # The docstring above is also the tool's JSON schema in chat templates (Calculator.function): a model reads
    # it. A failed evaluation is None (see the module's docstring).
    if not isinstance(expression, str) or len(expression) > MAX_LENGTH:
        return None
    text = _THOUSANDS.sub(lambda m: m.group().replace(",", ""), expression.translate(_SYMBOLS)).strip()
    # Only digits, operators, parentheses and spaces get as far as the parser, and never deeply nested:
    # Python's own parser would recurse on 1,000 parentheses.
    if not text or not _ALLOWED.fullmatch(text) or _depth(text) > MAX_DEPTH:
        return None
    if any(len(n.replace(".", "").lstrip("0")) > MAX_DIGITS for n in _DIGITS.findall(text)):
        return None
    try:
        tree = ast.parse(text, mode="eval")
        value = _evaluate(tree.body, text)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, _Rejected):
        return None
    return _format(value)


class Calculator:
    name = "Calculator"
    description = "Computes + - * / on numbers, e.g. Calculator(400 / 1400) -> 0.29."
    examples = [
        ("Out of 1400 participants, 400 (or 29%) passed the test.",
         "Out of 1400 participants, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed the test."),
        ("The shop sold 12 boxes of 24 eggs, 288 eggs in all.",
         "The shop sold 12 boxes of 24 eggs, [Calculator(12 * 24) -> 288] 288 eggs in all."),
        ("Jo had 350 marbles and lost 125, so 225 marbles were left.",
         "Jo had 350 marbles and lost 125, so [Calculator(350 - 125) -> 225] 225 marbles were left."),
        ("The bus drove 412 km in the morning and 239 km after lunch, 651 km that day.",
         "The bus drove 412 km in the morning and 239 km after lunch, [Calculator(412 + 239) -> 651] 651 km that day."),
    ]  # fmt: skip
    precedes = r"[$€£]?-?\d"  # a result only helps predict a number: positions elsewhere are not sampled
    function = staticmethod(calculator)  # its parameters and docstring: the tool's JSON schema (native tool calls)

    def __call__(self, arg: str) -> str | None:
        # A call must compute something: "[Calculator(13780) -> 13780]" only copies a number the annotating
        # model read further on in the text, and teaches nothing a model could repeat without that text.
        return calculator(arg) if _OPERATION.search(arg) else None

    @staticmethod
    def usable(arg: str, before: str) -> bool:
        """Toolformer augmentation: a call can stand where every number in it has already been written."""
        said = {n.replace(",", "") for n in _NUMBER.findall(before)}
        return all(n.replace(",", "") in said for n in _NUMBER.findall(arg))


class _Rejected(Exception):
    pass


def _depth(text: str) -> int:
    deepest = depth = signs = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        signs = signs + 1 if ch in "+-" else (signs if ch.isspace() else 0)
        deepest = max(deepest, depth, signs)
    return deepest


def _evaluate(node: ast.AST, text: str) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(ast.get_source_segment(text, node))  # exact: "0.1" is 1/10, not the nearest float
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, text)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        value = _OPERATORS[type(node.op)](_evaluate(node.left, text), _evaluate(node.right, text))
        if abs(value) > MAX_MAGNITUDE:
            raise _Rejected
        return value
    raise _Rejected


def _format(value: Fraction) -> str:
    exact = (
        Decimal(value.numerator) / Decimal(value.denominator) if value.denominator != 1 else Decimal(value.numerator)
    )
    rounded = exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP, context=Context(prec=40))
    text = format(rounded, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
