"""A safe arithmetic evaluator for GSM8K-style calculator annotations (``<<48/2=24>>``).

During decoding, a sequence that ends in an open ``<<expr=`` gets the value of ``expr`` and
``>>`` forced as its next tokens (see :mod:`selftrain.sampling`). The expression comes from a
model, so it is parsed by a small recursive-descent parser over exact fractions, never by
``eval``: numbers (``1,234.5``), ``+ - * / x`` and the typographic times and divide signs,
parentheses, a postfix ``%`` (divides by 100) and powers (``^`` or ``**``) with small integer
exponents. The expression's length, the
nesting depth and the size of every intermediate number are bounded, so no input can take
long; anything it cannot compute (junk, division by zero, a number too big) gives ``None``.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["MAX_EXPRESSION_CHARS", "calculate", "fill", "format_number", "open_expression"]

MAX_EXPRESSION_CHARS = 120
MAX_DEPTH = 16
MAX_ABS = Fraction(10) ** 15  # every intermediate value stays below this
MAX_EXPONENT = 12
MAX_DENOMINATOR = 10**12

# ASCII digits only: ``\d`` alone also matches other scripts' digits (``١٢٣``)
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)|(?P<op>\*\*|[-+*/x\u00d7\u00f7^%()]))",
    re.ASCII,
)
# An annotation still open at the end of the text: ``<<expr=`` with nothing after the ``=``.
_OPEN = re.compile(rf"<<([^<>=\n]{{1,{MAX_EXPRESSION_CHARS}}})=$")


class _Fail(Exception):
    pass


def _check(value: Fraction) -> Fraction:
    if abs(value) >= MAX_ABS or value.denominator > MAX_DENOMINATOR:
        raise _Fail
    return value


class _Parser:
    """expr := term (("+"|"-") term)*; term := unary (("*"|"/") unary)*;
    unary := ("-"|"+") unary | power; power := postfix (("^"|"**") unary)?;
    postfix := atom "%"*; atom := number | "(" expr ")"."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise _Fail
        self.i += 1
        return self.tokens[self.i - 1]

    def expr(self) -> Fraction:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Fail
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            value = _check(value + rhs if op == "+" else value - rhs)
        self.depth -= 1
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "x", "\u00d7", "/", "\u00f7"):
            op = self.take()[1]
            rhs = self.unary()
            if op in ("/", "\u00f7"):
                if rhs == 0:
                    raise _Fail
                value = _check(value / rhs)
            else:
                value = _check(value * rhs)
        return value

    def unary(self) -> Fraction:
        if self.peek() in ("-", "+"):
            sign = self.take()[1]
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Fail
            value = self.unary()
            self.depth -= 1
            return -value if sign == "-" else value
        return self.power()

    def power(self) -> Fraction:
        base = self.postfix()
        if self.peek() in ("^", "**"):
            self.take()
            exponent = self.unary()
            if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
                raise _Fail
            if base == 0 and exponent < 0:
                raise _Fail
            result = Fraction(1)
            for _ in range(abs(int(exponent))):
                result = _check(result * base)
            return _check(1 / result) if exponent < 0 else result
        return base

    def postfix(self) -> Fraction:
        value = self.atom()
        while self.peek() == "%":
            self.take()
            value = _check(value / 100)
        return value

    def atom(self) -> Fraction:
        kind, text = self.take()
        if kind == "num":
            return _check(Fraction(text.replace(",", "")))
        if text == "(":
            value = self.expr()
            if self.take()[1] != ")":
                raise _Fail
            return value
        raise _Fail


def _tokenize(expression: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    expression = expression.rstrip()
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if match is None or match.end() == pos:
            raise _Fail
        kind = "num" if match.group("num") is not None else "op"
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def calculate(expression: str) -> Fraction | None:
    """The exact value of an arithmetic expression, or None if it cannot be computed safely."""
    if not isinstance(expression, str):
        raise TypeError(f"calculate takes the expression's text, got {type(expression).__name__}")
    if not expression or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    try:
        tokens = _tokenize(expression.replace("$", "").replace("\u2212", "-"))
        if not tokens:
            return None
        parser = _Parser(tokens)
        value = parser.expr()
        if parser.i != len(tokens):
            return None
        return value
    except (_Fail, ValueError, ZeroDivisionError, OverflowError, ArithmeticError, RecursionError):
        return None


def format_number(value: Fraction, decimals: int = 4) -> str:
    """``24`` for whole values, else the value rounded to ``decimals`` places without
    trailing zeros (``7.5``, ``0.3333``)."""
    if value.denominator == 1:
        return str(value.numerator)
    rounded = round(value, decimals)
    text = f"{float(rounded):.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def open_expression(text: str) -> str | None:
    """The expression of an annotation left open at the end of ``text`` (``...<<48/2=``),
    or None."""
    match = _OPEN.search(text[-(MAX_EXPRESSION_CHARS + 3) :])
    return match.group(1) if match else None


def fill(text: str) -> str | None:
    """What a calculator appends to ``text``: ``"24>>"`` after ``"...<<48/2="``, else None."""
    expression = open_expression(text)
    if expression is None:
        return None
    value = calculate(expression)
    return None if value is None else format_number(value) + ">>"
