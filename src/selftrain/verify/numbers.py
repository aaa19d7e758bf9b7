"""Numeric answer extraction and judging, GSM8K style.

Numbers are read as written ("1,234", "$3.50", "-7", ".5") and also as simple fractions
("3/4", ``\\frac{3}{4}``) and, on request, ratios ("3:4"). Canonical strings keep the form the
number was written in: integers ("1234"), decimals without trailing zeros ("2.5"), reduced
fractions ("5/2"), ratios as written ("3:4"); :func:`parse_number` gives their exact values.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

__all__ = [
    "canonical_number",
    "extract_number",
    "is_correct_number",
    "number_matches",
    "parse_number",
]

# Calculator annotations like ``<<12+7=19>>``; an unclosed one (truncated output) runs to the end.
_ANNOTATION = re.compile(r"<<[^<>]*(?:>>|$)")
# LaTeX fractions are rewritten to ``a/b`` before numbers are read.
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
# A fraction in parentheses, as in ``-(1/3)``, reads as the bare fraction.
_PAREN_FRAC = re.compile(r"\((\d+/\d+)\)")

# A number: optional sign (not a binary minus as in ``12-7``), optional currency, then a
# fraction ``3/4`` (plain integers, not part of a date like ``3/4/2020``), or ``1,234.5`` /
# ``1234.5`` / ``.5``. Trailing periods and units are simply not captured.
_SIGN = r"(?:(?<![\w)\]])(?P<neg>[-\u2212]))?[$\u20ac\u00a3]?"
_FRACTION = r"(?<![\d/.])(?P<fnum>\d+)/(?P<fden>0*[1-9]\d*)(?![\d/]|\.\d)"
_RATIO = r"(?<![\d:.])(?P<rnum>\d+):(?P<rden>0*[1-9]\d*)(?![\d:]|\.\d)"
_DECIMAL = r"(?P<num>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_NUMBER = re.compile(rf"{_SIGN}(?:{_FRACTION}|{_DECIMAL})")
_NUMBER_OR_RATIO = re.compile(rf"{_SIGN}(?:{_RATIO}|{_FRACTION}|{_DECIMAL})")

# Markers capture the rest of their line in a lookahead so that repeated markers on one line
# are all found.
_HASHES = re.compile(r"#{2,}(?=(?P<rest>[^\n]*))")
_ANSWER_IS = re.compile(r"\banswer\b\s*(?:is\b|was\b|:|=)(?=(?P<rest>[^\n]*))", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{(?=(?P<rest>[^\n]*))")


def _normalise(match: re.Match[str]) -> str | None:
    """Turn a number match into a canonical string ("1234", "2.5", "-3", "5/2", "3:4")."""
    sign = -1 if match.group("neg") else 1
    if match.groupdict().get("rnum") is not None:
        return f"{'-' if sign < 0 else ''}{int(match.group('rnum'))}:{int(match.group('rden'))}"
    if match.group("fnum") is not None:
        value = sign * Fraction(int(match.group("fnum")), int(match.group("fden")))
        return str(value.numerator) if value.denominator == 1 else str(value)
    try:
        decimal = Decimal(match.group("num").replace(",", ""))
    except InvalidOperation:
        return None
    return _decimal_string(-decimal if sign < 0 else decimal)


def _decimal_string(value: Decimal) -> str:
    """ "1234" for integral values, else the shortest plain decimal ("2.5", "0.00001")."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _first_number(text: str, pattern: re.Pattern[str]) -> str | None:
    match = pattern.search(text)
    return _normalise(match) if match else None


def _last_number(text: str, pattern: re.Pattern[str]) -> str | None:
    matches = list(pattern.finditer(text))
    return _normalise(matches[-1]) if matches else None


def extract_number(text: str, *, ratios: bool = False) -> str | None:
    """Extract the final numeric answer from a completion, or None if there is none.

    Priority: the last ``#### N`` marker, then the last "The answer is N" / "answer: N" (the
    number after the line's last ``=`` where it has one: "The answer is 4 + 1 = 5"),
    then the last ``\\boxed{N}``, then the last number in the text. Calculator annotations
    ``<<...>>`` are ignored; ``\\frac{a}{b}`` and ``(a/b)`` read as ``a/b``. With ``ratios``,
    ``3:4`` is one answer (a ratio) instead of two numbers; leave it off where times like 3:30
    may appear.
    """
    pattern = _NUMBER_OR_RATIO if ratios else _NUMBER
    text = _LATEX_FRAC.sub(r"\1/\2", _ANNOTATION.sub(" ", text))
    text = _PAREN_FRAC.sub(r"\1", text)
    for marker_pattern in (_HASHES, _ANSWER_IS, _BOXED):
        for marker in reversed(list(marker_pattern.finditer(text))):
            rest = marker.group("rest")
            # "The answer is 4 + 1 = 5.": the result follows the last "=" of the line.
            if marker_pattern is not _BOXED and "=" in rest:
                rest = rest.rsplit("=", 1)[1]
            number = _first_number(rest, pattern)
            if number is not None:
                return number
    return _last_number(text, pattern)


def parse_number(value: str) -> Fraction | None:
    """The exact value of one number written alone ("1,234", "$5", "-2.5", "5/2", "3:4"),
    or None if ``value`` is not a single number (surrounding spaces and a final period are
    allowed)."""
    match = _NUMBER_OR_RATIO.fullmatch(value.strip().rstrip("."))
    if match is None:
        return None
    canonical = _normalise(match)
    if canonical is None:
        return None
    if ":" in canonical:
        num, den = canonical.split(":")
        return Fraction(int(num), int(den))
    return Fraction(canonical)


def canonical_number(value: str | int | float) -> str | None:
    """A gold answer as a canonical number string, or None if it is not a number.

    Floats from JSON become their shortest exact decimal (``39.0`` -> "39",
    ``0.6666666666666666`` stays as is); strings are read like :func:`parse_number` reads them
    ("1,080" -> "1080", "$5" -> "5", "10/4" -> "5/2", "3:4" stays a ratio)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return _decimal_string(Decimal(repr(value)))
    match = _NUMBER_OR_RATIO.fullmatch(value.strip().rstrip("."))
    return _normalise(match) if match else None


def number_matches(
    predicted: str, gold: str, *, abs_tol: float = 1e-4, rel_tol: float = 1e-6
) -> bool:
    """Whether a predicted number matches a gold number: the one rule for comparing numbers.

    Both must be single numbers (:func:`parse_number`). Integers must match exactly (so an
    answer off by one is wrong at any magnitude). Otherwise the difference may be up to
    ``max(abs_tol, rel_tol * |gold|)``: "0.3333" matches a gold 0.3333333333333333 and "1/3"
    matches it exactly, but "0.33" does not. ``rel_tol=0`` gives a plain absolute tolerance."""
    x, y = parse_number(predicted), parse_number(gold)
    if x is None or y is None:
        return False
    if x == y:
        return True
    if x.denominator == 1 and y.denominator == 1:
        return False
    return abs(x - y) <= max(Fraction(repr(abs_tol)), Fraction(repr(rel_tol)) * abs(y))


def is_correct_number(completion: str, gold: str) -> bool:
    """True if the number extracted from ``completion`` is within 1e-4 of the gold answer
    (:func:`number_matches` with no relative tolerance)."""
    predicted = extract_number(completion)
    return predicted is not None and number_matches(predicted, gold, rel_tol=0.0)
