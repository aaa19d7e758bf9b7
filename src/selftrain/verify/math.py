"""Final answers of competition mathematics (MATH): extraction and math-verify judging.

:func:`extract_answer` takes the last ``\\boxed{}`` of a completion (else the text after
"the answer is" / "answer:", else a short one-line completion as a whole) and
:func:`answers_match` compares it with the gold answer: a normalised string comparison (which
also covers answers math-verify cannot parse), then math-verify, with fixes for its blind
spots found on the MATH answers (unbraced ``\\frac \\pi4``, ``\\phantom``, base subscripts,
small numbers it compares only to 6 decimals). math-verify's SIGALRM timeouts only
work in the main thread; elsewhere they are off and answers that could make sympy run for
ever are not handed to it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from typing import Any

import sympy
from math_verify import parse, verify
from math_verify.errors import TimeoutException
from math_verify.utils import timeout

__all__ = [
    "answers_match",
    "boxed_contents",
    "brace_fractions",
    "extract_answer",
    "last_boxed",
    "normalise_answer",
]

# math-verify guards parsing and each comparison with SIGALRM; these are its limits (seconds).
PARSE_TIMEOUT_S = 3
VERIFY_TIMEOUT_S = 3
# Longer predicted answers skip math-verify (only the string comparison runs).
MAX_VERIFY_CHARS = 400
# A completion with no box and no "answer is" phrase counts as a bare answer if it is one
# line of at most this many characters and words (the "direct" prompting style), so that
# "5", "$\frac{1}{2}$", "x = 3" or "\text{Monday}" count but a sentence does not.
MAX_BARE_ANSWER_CHARS = 80
MAX_BARE_ANSWER_WORDS = 3

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_TOKEN_RE = re.compile(r"\\boxed[ \t]+([^\s${}]+)")  # "\boxed 9", as in two MATH solutions
_ANSWER_IS_RE = re.compile(r"\banswer\s*(?:is\b|:)\s*[:=]?", re.IGNORECASE)
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")  # plain words, not \commands

logger = logging.getLogger(__name__)

# -- answer extraction ---------------------------------------------------------------------


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[start] == "{"`` and the index just past
    its closing brace, or None if it never closes. ``\\{`` and ``\\}`` are literal braces."""
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def boxed_contents(text: str) -> list[str]:
    """Stripped contents of every complete ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces
    kept, empty ones included) and brace-less ``\\boxed 9``, ordered by where they end (so an
    outer box comes after the boxes nested in it)."""
    found: list[tuple[int, str]] = []
    for match in _BOX_RE.finditer(text):
        group = _braced(text, match.end() - 1)
        if group is not None:
            found.append((group[1], group[0].strip()))
    found.extend((m.end(), m.group(1)) for m in _BOX_TOKEN_RE.finditer(text))
    return [content for _, content in sorted(found)]


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty box (see :func:`boxed_contents`), or None. Empty
    and unterminated (truncated) boxes are passed over in favour of an earlier complete one."""
    contents = [content for content in boxed_contents(text) if content]
    return contents[-1] if contents else None


def _find_close(text: str, right: str, start: int) -> int:
    """Index of the first ``right`` delimiter at or after ``start`` that is not escaped
    (``\\$`` is a dollar sign, not the end of the math), or -1."""
    i = text.find(right, start)
    while i > 0 and right.startswith("$") and text[i - 1] == "\\":
        i = text.find(right, i + 1)
    return i


def _strip_math(text: str) -> str:
    """Drop markdown emphasis, a trailing full stop and ``$...$`` / ``\\(...\\)`` /
    ``\\[...\\]`` delimiters around a whole answer."""
    text = text.strip().strip("*").strip()
    while True:
        before = text
        text = text.rstrip(" .,;").strip()
        for left, right in _DELIMITERS:
            close = _find_close(text, right, len(left)) if text.startswith(left) else -1
            if close > len(left) and close == len(text) - len(right):
                text = text[len(left) : close].strip()
        text = text.strip("*").strip()
        if text == before:
            return text


def _answer_phrase(text: str) -> str:
    """The answer in the text after "the answer is": its first math span if it starts with
    one (``$5$. I hope it is correct.``; it may span lines), else the rest of the sentence
    on that line."""
    text = text.strip().strip("*").strip()
    for left, right in _DELIMITERS:
        if text.startswith(left):
            end = _find_close(text, right, len(left))
            if end > len(left):
                return text[len(left) : end].strip()
    line = text.split("\n", 1)[0]
    return _strip_math(re.split(r"\.(?:\s|$)", line, maxsplit=1)[0])


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion: the last ``\\boxed{}``; else what follows the last
    "the answer is" / "answer:" (up to the end of its sentence or math span); else the whole
    completion when it is one short line of at most three words (a direct answer such as
    ``$\\frac{1}{2}$``); else None.

    The last ``$...$`` of a longer completion is deliberately *not* used: in a chain of
    thought it is usually an intermediate step, and the model is asked to box its answer."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    markers = list(_ANSWER_IS_RE.finditer(completion))
    if markers:
        return _answer_phrase(completion[markers[-1].end() :]) or None
    text = completion.strip()
    if (
        text
        and "\n" not in text
        and len(text) <= MAX_BARE_ANSWER_CHARS
        and len(_WORD_RE.findall(text)) <= MAX_BARE_ANSWER_WORDS
    ):
        return _strip_math(text) or None
    return None


# -- judging -------------------------------------------------------------------------------

_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_SPACING_RE = re.compile(r"\\[,;:! ]|\\q?quad|~")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
# A numeral in another base: "52_8", "4210_{5}", "\text{A5}_{12}" (digits and capital letters
# with at least one digit, not part of a command or a variable name such as \log_2 or a_1).
_BASE_RE = re.compile(
    r"(?<![\\a-zA-Z])(?:\\text\{)?[0-9A-Z.]*\d[0-9A-Z.]*\}?\s*_\s*(?:\{\s*(\d+)\s*\}|(\d+))"
)


def normalise_answer(answer: str) -> str:
    """A conservative canonical string for an answer: no spacing, ``$``, ``\\left``/
    ``\\right``, ``\\text{}`` wrappers, degree signs or trailing full stop;
    ``\\dfrac``/``\\tfrac`` become ``\\frac``. Case is kept."""
    text = answer.strip()
    text = _TEXT_CMD_RE.sub(r"\1", text)
    text = _SPACING_RE.sub("", text)
    text = _DEGREE_RE.sub("", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = text.replace("\\$", "").replace("$", "")
    text = re.sub(r"\s+", "", text)
    return text.rstrip(".")


# Where no timeout can be armed (worker threads), predicted answers that can make sympy run
# for ever are only compared as strings: power towers, huge exponents, huge factorials.
_BLOWUP_RE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\{?\s*\d{4,}|\d{4,}\s*!|\d{40,}")


def _bases(answer: str) -> list[str]:
    """The bases of the numerals written with a base subscript, in order."""
    return [a or b for a, b in _BASE_RE.findall(answer)]


def _timeouts() -> tuple[int | None, int | None]:
    """math-verify's (parsing, comparison) timeouts: SIGALRM only works in the main thread
    of the main interpreter on POSIX, so elsewhere they are off (math-verify would raise)
    and answers matching ``_BLOWUP_RE`` skip math-verify instead."""
    if os.name == "posix" and threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S
    return None, None


_FRAC_RE = re.compile(r"\\[dt]?frac(?![a-zA-Z])")
_COMMAND_RE = re.compile(r"\\(?:[a-zA-Z]+|.)")
_THOUSANDS_RE = re.compile(r"(\d)\{?,\}?\\!\s*(?=\d{3}(?!\d))")
_PHANTOM_RE = re.compile(r"\\[hv]?phantom(?![a-zA-Z])")


def _latex_arg(text: str, start: int) -> tuple[str, int] | None:
    """The macro argument at ``text[start:]`` (after spaces): a brace group's content, a
    ``\\command`` or one character; with the index just past it. None at the end."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] == "}":
        return None
    if text[i] == "{":
        return _braced(text, i)
    if text[i] == "\\":
        match = _COMMAND_RE.match(text, i)
        if match:
            return match.group(), match.end()
    return text[i], i + 1


def brace_fractions(text: str) -> str:
    """``\\frac\\pi 2`` / ``\\dfrac 1{11}`` -> ``\\frac{\\pi}{2}`` / ``\\frac{1}{11}``.

    math-verify's normaliser mangles a ``\\frac`` whose arguments are not braced and start
    with a command (``\\frac \\pi4`` becomes ``\\frac{\\}{p}i4`` and parses as 2)."""
    out: list[str] = []
    i = 0
    while (match := _FRAC_RE.search(text, i)) is not None:
        first = _latex_arg(text, match.end())
        second = _latex_arg(text, first[1]) if first else None
        if first is None or second is None:
            out.append(text[i : match.end()])
            i = match.end()
            continue
        numerator, denominator = brace_fractions(first[0]), brace_fractions(second[0])
        out.append(f"{text[i : match.start()]}\\frac{{{numerator}}}{{{denominator}}}")
        i = second[1]
    out.append(text[i:])
    return "".join(out)


def _drop_phantoms(text: str) -> str:
    """Remove ``\\phantom{...}`` / ``\\phantom -`` (invisible spacing)."""
    while (match := _PHANTOM_RE.search(text)) is not None:
        arg = _latex_arg(text, match.end())
        text = text[: match.start()] + text[arg[1] if arg else match.end() :]
    return text


def _parse(answer: str, timeout_s: int | None) -> list[Any]:
    """math-verify's parse of one answer (no ``\\boxed``). First drops what trips it up: a
    trailing full stop or comma and ``\\phantom``s (``\\begin{pmatrix}...\\end{pmatrix}.``
    or a matrix entry ``\\phantom -1`` make the matrix parse as a number), thousands
    separators (``\\frac{12}{5,\\!525}`` does not parse); and braces fraction arguments."""
    text = brace_fractions(_drop_phantoms(answer).strip().rstrip(" .,"))
    text = _THOUSANDS_RE.sub(r"\1", text)  # "5,\!525" (inside \frac math-verify fails)
    return parse(f"$\\boxed{{{text}}}$", parsing_timeout=timeout_s)


@functools.lru_cache(maxsize=32768)
def _parse_gold(answer: str, timeout_s: int | None) -> tuple[Any, ...]:
    return tuple(_parse(answer, timeout_s))


def _small_numbers_differ(gold: Any, predicted: Any) -> bool:
    """Whether two numbers below 1 in size differ by more than 1e-5 of their size.

    math-verify rounds floats to 6 decimals and chops tiny differences, so it takes
    ``.0000673`` for ``.0000672`` and ``\\frac{2}{2^{98}}`` for ``\\frac{1}{2^{98}}``."""
    if not (isinstance(gold, sympy.Expr) and isinstance(predicted, sympy.Expr)):
        return False
    if not (gold.is_number and predicted.is_number):
        return False
    try:
        g, p = sympy.N(gold.doit(), 30), sympy.N(predicted.doit(), 30)
        scale = sympy.Max(abs(g), abs(p))
        if not scale.is_Number or scale >= 1:
            return False
        return bool(abs(g - p) > scale * sympy.Float("1e-5"))
    except (TypeError, ValueError, ArithmeticError):  # not comparable: trust math-verify
        return False


def answers_match(gold: str, predicted: str) -> bool:
    """Whether ``predicted`` is equivalent to the gold answer ``gold`` (both LaTeX without
    ``\\boxed``): equal after :func:`normalise_answer`, or equal according to math-verify
    (numbers, fractions, roots, sets, tuples, intervals, matrices, equations, ``x=5`` for
    ``5``, ...), with two corrections: a base subscript must be the gold's (``52_9`` is not
    ``52_8``) and numbers below 1 must agree to a relative 1e-5. Never raises; unparsable
    answers count as different unless their strings match."""
    if normalise_answer(gold) == normalise_answer(predicted):
        return True
    if len(predicted) > MAX_VERIFY_CHARS or len(gold) > MAX_VERIFY_CHARS:
        return False
    # math-verify reads "52_8" as 52 and would accept "52_9"; a stated base must be the gold's.
    predicted_bases = _bases(predicted)
    if predicted_bases and predicted_bases != _bases(gold):
        return False
    parse_s, verify_s = _timeouts()
    if verify_s is None and _BLOWUP_RE.search(predicted):
        return False
    try:
        gold_parsed = list(_parse_gold(gold, parse_s))
        pred_parsed = _parse(predicted, parse_s)
        if not gold_parsed or not pred_parsed:
            return False
        if not verify(gold_parsed, pred_parsed, timeout_seconds=verify_s):
            return False
        differ = timeout(verify_s)(_small_numbers_differ)(gold_parsed[0], pred_parsed[0])
        return not differ
    except TimeoutException:
        return False
    except Exception as exc:  # math-verify reports its own errors; a judge must not crash
        logger.debug("math-verify failed on %r vs %r: %s", gold, predicted, exc)
        return False
