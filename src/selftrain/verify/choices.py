"""Answer extraction and judging for multiple-choice (letter) and yes/no questions.

Letters are read, most trusted first, from:

1. the last explicit answer statement: "The answer is B", "answer: (B)", "Answer - b.",
   "the correct option is C", ``\\boxed{B}``, "D is the correct choice", "(B) is correct"
   (a bare capital "A" or "I" followed by an ordinary word is the article or pronoun, not a
   label: "The answer is A good idea");
2. a last line that is only a label: "B", "(B)", "B.", "option B";
3. a last line that starts with a label and then the option text: "B) enforce", "(B) enforce";
4. a letter at the very end of the last line ("so I pick B."), or the one label that line
   mentions ("I'd go with (C) here", but not "(A) x (B) y");
5. a first line that starts with a label and then text (a multi-line option after its label).

Only letters of the first ``n_options`` are taken, so "I" never counts on a 4-option task.
Kinds 1 and 2 are *strong*, the others *weak*. :func:`judge_choice`, which knows the options,
decides by, in order: an option's exact text right after the last "answer is" ("The answer is
A and D" when "A and D" is an option), a strong letter, an option's exact text as the last
line or the whole completion ("Vitamin A" is that option, not the letter A), a weak letter.

Yes/no answers come from the last "answer is yes/no" statement, else from a leading
"Yes"/"No" and a trailing "yes"/"no" (both must agree when both are there); "true"/"false"
count as "yes"/"no".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "LetterMatch",
    "extract_choice_letter",
    "extract_yes_no",
    "find_choice_letter",
    "judge_choice",
    "match_choice_text",
    "normalise_option",
]

# Words that may follow a capital "A"/"I" when it is a label ("The answer is A because ...").
_CONNECTIVES = frozenset(
    {"and", "or", "because", "since", "as", "so", "but", "which", "with", "for", "given"}
    | {"then", "here", "is", "was", "seems", "based", "due", "according", "from"}
)

# Cues that introduce the final answer. The letter itself is parsed by ``_LETTER``.
_CUE = re.compile(
    r"""(?ix)
    (?:
        \banswer\b
        (?:\s+(?:is|was|would\s+be|should\s+be|must\s+be|will\s+be|=))?
        (?:\s+(?:therefore|thus|clearly|definitely|probably|then))?
      | \b(?:correct|right|best|final)\s+(?:option|choice|letter)
        (?:\s+(?:is|would\s+be|must\s+be))?
      | \\boxed\s*\{
    )
    \s*(?:[:=,\u2013\u2014]|-(?=\s))?\s*
    (?:(?:option|choice|letter)\b\s*)?
    [\"'\u201c\u2018]?
    """
)
# A label right after a cue: bracketed (any case), a capital letter not followed by another
# letter or digit, or a lower-case letter that ends the sentence ("answer: b.").
_LETTER = re.compile(
    r"""(?x)
    (?:
        [(\[]\s*(?P<b>[A-Za-z])\s*[)\]]
      | (?P<u>[A-Z])(?![A-Za-z0-9])
      | (?P<l>[a-z])(?=[.,;:!)\]}\"'\u201d\u2019]|[ \t]*(?:\n|$))
    )
    """
)
# A label stated after the fact: "D is the correct choice", "(B) is correct", "Option C is
# the answer".
_POST_CUE = re.compile(
    r"(?i:\b(?:option|choice)\s*)?"
    r"(?:[(\[](?P<b>[A-Za-z])[)\]]|(?<![A-Za-z0-9'\u2019])(?P<u>[A-Z]))"
    r"(?i:\s+is\s+(?:(?:the\s+)?(?:(?:correct|right|best|final)\s+)?(?:answer|choice|option)"
    r"|correct|right)\b)"
)
_NEXT_WORD = re.compile(r"[ \t]+([A-Za-z]+)")
# Fallbacks on the last non-empty line.
_ONLY_LABEL = re.compile(
    r"(?i:(?:option|choice|letter)\s*)?[(\[]?\s*(?P<x>[A-Za-z])\s*[)\]]?\s*[.:]?"
)
_LABEL_THEN_TEXT = re.compile(r"(?:[(\[](?P<b>[A-Za-z])[)\]]|(?P<u>[A-Z])\s*[).:])\s+\S")
_FINAL_LETTER = re.compile(r"(?<![A-Za-z0-9'\u2019])\(?(?P<x>[A-Z])\)?\s*[.!]?\s*$")
_LABEL_MENTION = re.compile(r"[(\[](?P<b>[A-Z])[)\]]|(?i:\b(?:option|choice)\s+)(?P<u>[A-Z])\b")

# Markup a model may wrap its answer in.
_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_DECORATION = re.compile(r"(\*\*|__|`+)(?=\S)(.+?)(?<=\S)\1")  # **bold**, __bold__, `code`


class LetterMatch(NamedTuple):
    """A letter found in a completion, and whether it came from an explicit statement."""

    letter: str
    strong: bool


def _clean(text: str) -> str:
    """Drop markdown emphasis and unwrap ``\\text{...}``-style LaTeX around answers."""
    previous = None
    while previous != text:
        previous, text = text, _WRAPPERS.sub(r"\1", text)
    return _DECORATION.sub(r"\2", text)


def _valid(letter: str, n_options: int) -> bool:
    return 0 <= ord(letter.upper()) - ord("A") < n_options


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _letter_after_cue(text: str, start: int) -> str | None:
    """The label starting at ``start`` (right after an answer cue), if it is one."""
    match = _LETTER.match(text, start)
    if match is None:
        return None
    letter = match.group("b") or match.group("u") or match.group("l")
    if match.group("u") in ("A", "I"):
        word = _NEXT_WORD.match(text, match.end())
        if word is not None and word.group(1).lower() not in _CONNECTIVES:
            return None  # "The answer is A good ...", "A Dyson", "answer is I think"
    return letter.upper()


def _label_then_text(line: str, n_options: int) -> LetterMatch | None:
    """A weak letter from a line that starts with a label and then text: "(B) enforce"
    (not a list of options: "(A) bank (B) library")."""
    match = _LABEL_THEN_TEXT.match(line.strip())
    if match is None or not _valid(match.group("b") or match.group("u"), n_options):
        return None
    if len({m.group("b") or m.group("u") for m in _LABEL_MENTION.finditer(line)}) > 1:
        return None
    return LetterMatch((match.group("b") or match.group("u")).upper(), False)


def find_choice_letter(text: str, n_options: int = 26) -> LetterMatch | None:
    """The option letter a completion gives as its answer (see the module docstring)."""
    text = _clean(text)
    statements = [
        (cue.start(), letter)
        for cue in _CUE.finditer(text)
        if (letter := _letter_after_cue(text, cue.end())) and _valid(letter, n_options)
    ]
    for match in _POST_CUE.finditer(text):
        letter = (match.group("b") or match.group("u")).upper()
        if _valid(letter, n_options):
            statements.append((match.start(), letter))
    if statements:
        return LetterMatch(max(statements)[1], True)
    line = _last_line(text)
    if not line:
        return None
    match = _ONLY_LABEL.fullmatch(line)
    if match and _valid(match.group("x"), n_options):
        # A lone lower-case letter ("a", "i") counts too: nothing else is on the line.
        return LetterMatch(match.group("x").upper(), True)
    found = _label_then_text(line, n_options)
    if found is not None:
        return found
    match = _FINAL_LETTER.search(line)
    if match and _valid(match.group("x"), n_options):
        return LetterMatch(match.group("x"), False)
    mentioned = {m.group("b") or m.group("u") for m in _LABEL_MENTION.finditer(line)}
    mentioned = {letter for letter in mentioned if _valid(letter, n_options)}
    if len(mentioned) == 1:  # "(A) x (B) y" names no single answer
        return LetterMatch(mentioned.pop(), False)
    # "(D) Step 3: ...\nStep 4: ...": an answer that is a multi-line option.
    return _label_then_text(text.strip().split("\n", 1)[0], n_options)


def extract_choice_letter(text: str, n_options: int = 26) -> str | None:
    """Just the letter of :func:`find_choice_letter` ("A", "B", ...), or None."""
    found = find_choice_letter(text, n_options)
    return found.letter if found else None


_OPENING = " \"'\u201c\u2018"
_CLOSING = " \"'\u201d\u2019.!;,"


def normalise_option(text: str) -> str:
    """An option text or answer phrase for comparison: markup, outer quotes and final
    punctuation dropped, whitespace collapsed (case kept)."""
    text = " ".join(_clean(text).split())
    return text.lstrip(_OPENING).rstrip(_CLOSING)


_LABEL_ONLY_TEXT = re.compile(r"[(\[]?[A-Za-z][)\]]?")
_ANSWER_PHRASE = re.compile(
    r"(?i)\banswer\b(?:\s+(?:is|was|would\s+be|should\s+be|must\s+be|will\s+be))?"
    r"\s*[:=]?[ \t]*(?=(?P<line>[^\n]*)(?P<rest>.*))",
    re.DOTALL,
)
_DASH = re.compile(r"^\s*[-\u2013\u2014]\s+")


def _phrases(raw: list[str]) -> list[str]:
    """Normalised candidate phrases (also without a leading "- "), label-only ones left out."""
    out: list[str] = []
    for phrase in raw:
        for variant in (phrase, _DASH.sub("", phrase)):
            norm = normalise_option(variant)
            if norm and not _LABEL_ONLY_TEXT.fullmatch(norm) and norm not in out:
                out.append(norm)
    return out


def _stated_phrases(text: str, last_only: bool = False) -> list[str]:
    """What follows each "answer is" from the last one back: to the end of its line, then to
    the end of the text."""
    cues = list(_ANSWER_PHRASE.finditer(text))
    raw: list[str] = []
    for cue in reversed(cues[-1:] if last_only else cues):
        raw += [cue.group("line"), cue.group("line") + cue.group("rest")]
    return raw


def _matching(phrases: list[str], choices: Sequence[str]) -> list[int]:
    options = [normalise_option(c) for c in choices]
    for phrase in phrases:
        exact = [i for i, option in enumerate(options) if option and option == phrase]
        if exact:
            return exact
        folded = phrase.casefold()
        loose = [i for i, option in enumerate(options) if option and option.casefold() == folded]
        if loose:
            return loose
    return []


def match_choice_text(text: str, choices: Sequence[str]) -> list[int]:
    """Indices of the options whose whole text is the completion's answer phrase (several
    when options repeat a text). The phrase is looked for after each "answer is" (last first),
    then as the last line, then as the whole completion; exact matches win over
    case-insensitive ones, and label-only phrases ("B", "(c)") are left to the letter rules."""
    return _matching(_phrases([*_stated_phrases(text), _last_line(text), text]), choices)


def judge_choice(completion: str, gold: str, choices: Sequence[str]) -> bool:
    """Whether ``completion`` picks the option lettered ``gold`` out of ``choices``.

    In order: an option's exact text right after the last "answer is" ("The answer is A and D"
    when "A and D" is an option); an explicit letter ("The answer is B", a lone "(B)"); an
    option's exact text elsewhere (so "Vitamin A" means that option, not the letter A); a weak
    letter ("so I pick B.", "B) enforce")."""
    target = ord(gold) - ord("A")
    stated = _matching(_phrases(_stated_phrases(completion, last_only=True)), choices)
    if stated:
        return target in stated
    found = find_choice_letter(completion, len(choices))
    if found is not None and found.strong:
        return found.letter == gold
    matched = match_choice_text(completion, choices)
    if matched:
        return target in matched
    return found is not None and found.letter == gold


_YN = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
_YN_STATEMENT = re.compile(
    r"(?i)\banswer\b(?:\s+(?:is|was|would\s+be|should\s+be|must\s+be|will\s+be))?"
    r"\s*(?:[:=]|-(?=\s))?\s*[\"'\u201c\u2018(]*\s*(yes|no|true|false)\b"
    r"(?!\s+(?:doubt|one|matter|longer|more|less|way)\b)"
)
_YN_LEADING = re.compile(r"(?i)^\W*(?:(yes)\b|(no|true|false)\s*(?:[.,;:!]|$))")
_YN_TRAILING = re.compile(r"(?i)\b(yes|no|true|false)\W*$")


def extract_yes_no(text: str) -> str | None:
    """The yes/no answer of a completion ("yes", "no"), or None (see the module docstring)."""
    text = _clean(text).strip()
    statements = _YN_STATEMENT.findall(text)
    if statements:
        return _YN[statements[-1].lower()]
    lead = _YN_LEADING.match(text)
    trail = _YN_TRAILING.search(text)
    first = _YN[(lead.group(1) or lead.group(2)).lower()] if lead else None
    last = _YN[trail.group(1).lower()] if trail else None
    if first and last and first != last:
        return None
    return first or last
