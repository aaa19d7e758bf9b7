"""Numeric answer extraction and judging, GSM8K style."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["extract_number", "is_correct_number", "numbers_equal"]

# Calculator annotations like ``<<12+7=19>>``; an unclosed one (truncated output) runs to the end.
_ANNOTATION = re.compile(r"<<[^<>]*(?:>>|$)")
# A number: optional sign (not a binary minus as in ``12-7``), optional currency, then
# ``1,234.5`` / ``1234.5`` / ``.5``. Trailing periods and units are simply not captured.
_NUMBER = re.compile(
    r"(?:(?<![\w)\]])(?P<neg>[-\u2212]))?"
    r"[$\u20ac\u00a3]?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
# Markers capture the rest of their line in a lookahead so that repeated markers on one line
# are all found.
_HASHES = re.compile(r"#{2,}(?=(?P<rest>[^\n]*))")
_ANSWER_IS = re.compile(r"\banswer\b\s*(?:is\b|was\b|:|=)(?=(?P<rest>[^\n]*))", re.IGNORECASE)


def _normalise(match: re.Match[str]) -> str | None:
    """Turn a ``_NUMBER`` match into a canonical string ("1234", "2.5", "-3")."""
    try:
        value = Decimal(match.group("num").replace(",", ""))
    except InvalidOperation:
        return None
    if match.group("neg"):
        value = -value
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return _normalise(match) if match else None


def _last_number(text: str) -> str | None:
    matches = list(_NUMBER.finditer(text))
    return _normalise(matches[-1]) if matches else None


def extract_number(text: str) -> str | None:
    """Extract the final numeric answer from a completion, or None if there is none.

    Priority: the last ``#### N`` marker, then the last "The answer is N" / "answer: N",
    then the last number in the text. Calculator annotations ``<<...>>`` are ignored.
    """
    text = _ANNOTATION.sub(" ", text)
    for pattern in (_HASHES, _ANSWER_IS):
        for marker in reversed(list(pattern.finditer(text))):
            number = _first_number(marker.group("rest"))
            if number is not None:
                return number
    return _last_number(text)


def _parse(value: str) -> Decimal | None:
    match = _NUMBER.fullmatch(value.strip().rstrip("."))
    if match is None:
        return None
    normalised = _normalise(match)
    return Decimal(normalised) if normalised is not None else None


def numbers_equal(a: str, b: str, tol: float = 1e-4) -> bool:
    """True if both strings are numbers (commas/currency allowed) within ``tol`` of each other."""
    x, y = _parse(a), _parse(b)
    if x is None or y is None:
        return False
    return abs(x - y) <= Decimal(repr(tol))


def is_correct_number(completion: str, gold: str) -> bool:
    """True if the number extracted from ``completion`` equals the gold answer."""
    predicted = extract_number(completion)
    return predicted is not None and numbers_equal(predicted, gold)
