"""Numeric math word problems: GSM8K, MultiArith, SVAMP, ASDiv, AddSub and SingleEq.

Every task here has ``kind = "number"``: ``answer`` is a canonical number string (see
:func:`selftrain.verify.numbers.canonical_number`: ``39.0`` -> "39", "1,080" -> "1080", non-integers
keep their decimals, ASDiv's fractions and ratios stay "5/2" / "3:4"). ``extract`` reads the
final answer of a completion (``#### N``, else "The answer is N", else ``\\boxed{N}``, else the
last number) and ``is_correct`` compares numbers: integers exactly, other values within
``max(1e-4, 1e-6 * |gold|)``.

Local files (under the data directory, see ``SOURCES.md``) and hub copies (as data in
``sources.json``):

========== ======================================= ============================================
task       files (split: size)                     hub (our split -> hub split)
========== ======================================= ============================================
gsm8k      train 7,473, test 1,319                 openai/gsm8k "main": train, test
multiarith test 600                                ChilleD/MultiArith: train, test
svamp      test 1,000 (the challenge set)          ChilleD/SVAMP: train, test (700/300 of it)
asdiv      test 2,215 records, 2,139 numeric       EleutherAI/asdiv: test -> validation
addsub     test 395                                allenai/lila "addsub": train, validation, test
singleeq   test 508                                allenai/lila "singleeq": train, validation, test
========== ======================================= ============================================

ASDiv's ``answer`` is a number with its unit ("9 (apples)") for 2,084 records. The rest were
inspected by hand: ratios ("3:4", Solution-Type Ratio) are kept as ratios and read with
ratio-aware extraction (43 records); fractions ("5/2", "-(1/3)") are kept as fractions (9);
ordinals ("6th", "The 60th caller.") become their number (3). Answers that are not numbers
(names such as "Mrs. Hilt", "Yes"/"No", "They are equal", clock times such as "3:30 p.m.",
dates) cannot be judged numerically: those 76 records are skipped, and their ids are listed
in ``task.skipped[split]``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from selftrain.tasks import benchmark, register
from selftrain.tasks.base import Example
from selftrain.tasks.benchmark import BenchmarkTask
from selftrain.tasks.data import (
    DataError,
    field,
    read_json_array,
    read_jsonl_records,
    require_file,
)
from selftrain.verify.numbers import canonical_number, extract_number, number_matches

__all__ = [
    "AddSubTask",
    "AsdivTask",
    "GSM8KTask",
    "MultiArithTask",
    "NumberTask",
    "SingleEqTask",
    "SvampTask",
    "asdiv_gold",
]

_NUMERIC = (int, float, str)


def _gold(value: Any, where: str, name: str) -> str:
    """``value`` as a canonical number, or a DataError naming the field."""
    gold = canonical_number(value) if isinstance(value, _NUMERIC) else None
    if gold is None:
        raise DataError(f"{where}: field {name!r} is not a number: {value!r}")
    return gold


def _single_solution(record: dict[str, Any], where: str, name: str = "lSolutions") -> str:
    """The one number in a ``lSolutions``-style list field."""
    values = field(record, name, where, list)
    if len(values) != 1:
        raise DataError(f"{where}: field {name!r} should hold one solution, got {len(values)}")
    return _gold(values[0], where, name)


class NumberTask(BenchmarkTask):
    """A benchmark whose gold answers are numbers (judged with a tolerance)."""

    kind: ClassVar[str] = "number"
    ratios: ClassVar[bool] = False  # whether "3:4" in a completion reads as one ratio

    def path(self, split: str) -> Path:
        """The local file of ``split`` (a DataError saying where it is expected if missing)."""
        return require_file(self.root, self.files[split])

    def extract(self, completion: str) -> str | None:
        """The final number in ``completion``, canonical, or None."""
        return extract_number(completion, ratios=self.ratios)

    def is_correct(self, completion: str, example: Example) -> bool:
        """Whether the extracted number matches the gold answer (see the module docstring)."""
        predicted = self.extract(completion)
        return predicted is not None and number_matches(predicted, example.answer)


# -- GSM8K ---------------------------------------------------------------------------------


@register("gsm8k")
class GSM8KTask(NumberTask):
    """GSM8K: grade-school problems; the rationale is the gold solution ending in ``#### N``."""

    name: ClassVar[str] = "gsm8k"

    _FINAL = re.compile(r"####\s*(?P<answer>[^\n]*?)\s*$")

    def _example(self, record: dict[str, Any], where: str, split: str, index: int) -> Example:
        question = field(record, "question", where)
        solution = field(record, "answer", where)
        final = self._FINAL.search(solution)
        if final is None:
            raise DataError(f"{where}: field 'answer' does not end with a '#### <number>' line")
        return Example(
            id=f"gsm8k/{split}/{index}",
            question=question.strip(),
            answer=_gold(final.group("answer"), where, "answer"),
            rationale=solution.strip(),
        )

    def read_split(self, split: str) -> list[Example]:
        """All problems of ``split`` from ``gsm8k/{train,test}.jsonl``."""
        path = self.path(split)
        return [
            self._example(record, f"{path}:{line}", split, i)
            for i, (line, record) in enumerate(read_jsonl_records(path))
        ]

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        """A row of openai/gsm8k (``question``, ``answer``: the same text as the files)."""
        return self._example(row, self.hub_where(split, index), split, index)


# -- MultiArith, AddSub, SingleEq (Zero-shot-CoT copies; hub: ChilleD, Lila) -----------------


class _ZeroShotCoTTask(NumberTask):
    """MultiArith, AddSub, SingleEq: the Zero-shot-CoT repo's files (``iIndex``,
    ``sQuestion``, ``lEquations``, ``lSolutions``); hub rows hold the question and the
    number in the two fields named by ``hub_fields``."""

    hub_fields: ClassVar[tuple[str, str]] = ("", "")  # (question, answer) fields of a hub row

    def read_split(self, split: str) -> list[Example]:
        """All problems of the file."""
        path = self.path(split)
        examples = []
        for index, record in read_json_array(path):
            where = f"{path}: record {index}"
            examples.append(
                Example(
                    id=f"{self.name}/{field(record, 'iIndex', where, int)}",
                    question=field(record, "sQuestion", where).strip(),
                    answer=_single_solution(record, where),
                    meta={"equations": field(record, "lEquations", where, list)},
                )
            )
        return examples

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        """A hub row: the question and the number in the fields named by ``hub_fields``."""
        where = self.hub_where(split, index)
        question, answer = self.hub_fields
        return Example(
            id=f"{self.name}/{split}/{index}",
            question=field(row, question, where).strip(),
            answer=_gold(field(row, answer, where, _NUMERIC), where, answer),
        )


@register("multiarith")
class MultiArithTask(_ZeroShotCoTTask):
    """MultiArith: multi-step arithmetic (``sQuestion``, ``lSolutions``)."""

    name: ClassVar[str] = "multiarith"
    # ChilleD/MultiArith rows: ``question``, ``final_ans`` (a number as a string).
    hub_fields: ClassVar[tuple[str, str]] = ("question", "final_ans")


class _LilaTask(_ZeroShotCoTTask):
    """AddSub / SingleEq: local Zero-shot-CoT files, hub copies from allenai/lila."""

    # allenai/lila rows: ``input`` (the question), ``output_answer`` (the number).
    hub_fields: ClassVar[tuple[str, str]] = ("input", "output_answer")


@register("addsub")
class AddSubTask(_LilaTask):
    """AddSub: one-step addition and subtraction stories."""

    name: ClassVar[str] = "addsub"


@register("singleeq")
class SingleEqTask(_LilaTask):
    """SingleEq: problems solved by a single equation."""

    name: ClassVar[str] = "singleeq"


# -- SVAMP ---------------------------------------------------------------------------------


@register("svamp")
class SvampTask(NumberTask):
    """SVAMP: the 1,000-problem challenge set; the question is ``Body + " " + Question``."""

    name: ClassVar[str] = "svamp"

    def _example(self, record: dict[str, Any], where: str, fallback_id: str) -> Example:
        body = field(record, "Body", where).strip()
        question = field(record, "Question", where).strip()
        problem_id = record.get("ID")
        return Example(
            id=f"{self.name}/{problem_id if isinstance(problem_id, str) else fallback_id}",
            question=f"{body} {question}",
            answer=_gold(field(record, "Answer", where, (int, float, str)), where, "Answer"),
            meta={"equation": record.get("Equation"), "type": record.get("Type")},
        )

    def read_split(self, split: str) -> list[Example]:
        """All problems of ``SVAMP.json`` (``ID``, ``Body``, ``Question``, ``Answer``)."""
        path = self.path(split)
        return [
            self._example(record, f"{path}: record {index}", str(index))
            for index, record in read_json_array(path)
        ]

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        """A row of ChilleD/SVAMP (the original fields ``ID``, ``Body``, ``Question``,
        ``Answer``, ``Equation``, ``Type``)."""
        return self._example(row, self.hub_where(split, index), f"{split}-{index}")


# -- ASDiv ---------------------------------------------------------------------------------

_ASDIV_NUMBER = re.compile(r"(?P<n>-?\d+(?:\.\d+)?)(?:\s+\(.*\))?")
_ASDIV_FRACTION = re.compile(r"(?P<neg>-)?\(?(?P<n>\d+)/(?P<d>\d+)\)?")
_ASDIV_RATIO = re.compile(r"\d+:\d+")
_ASDIV_ORDINAL = re.compile(r"(?:the\s+)?(?P<n>\d+)(?:st|nd|rd|th)\b(?:\s+[a-z]+)?\.?", re.I)


def asdiv_gold(answer: str, solution_type: str = "") -> str | None:
    """ASDiv's ``answer`` as a canonical number, or None when it is not a number.

    "9 (apples)" -> "9"; "-(1/3)" -> "-1/3"; "3:4" (Solution-Type Ratio) -> "3:4";
    "6th" / "The 60th caller." -> "6" / "60"; "Mrs. Hilt", "Yes", "3:30 p.m." -> None."""
    text = answer.strip()
    if match := _ASDIV_NUMBER.fullmatch(text):
        return canonical_number(match.group("n"))
    if match := _ASDIV_FRACTION.fullmatch(text):
        return canonical_number(f"{match.group('neg') or ''}{match.group('n')}/{match.group('d')}")
    if _ASDIV_RATIO.fullmatch(text) and solution_type == "Ratio":
        return canonical_number(text)
    if match := _ASDIV_ORDINAL.fullmatch(text):
        return canonical_number(match.group("n"))
    return None


@register("asdiv")
class AsdivTask(NumberTask):
    """ASDiv (math-evaluation-harness copy); non-numeric answers are skipped (module docs)."""

    name: ClassVar[str] = "asdiv"
    ratios: ClassVar[bool] = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skipped: dict[str, list[str]] = {}

    def _example(self, record: dict[str, Any], where: str, problem_id: str) -> Example | None:
        """The Example, or None if the answer is not a number."""
        body = field(record, "body", where).strip()
        question = field(record, "question", where).strip()
        raw = field(record, "answer", where)
        solution_type = field(record, "solution_type", where)
        gold = asdiv_gold(raw, solution_type)
        if gold is None:
            return None
        return Example(
            id=f"{self.name}/{problem_id}",
            question=f"{body} {question}",
            answer=gold,
            meta={
                "raw_answer": raw,
                "solution_type": solution_type,
                "formula": record.get("formula"),
            },
        )

    def _keep(self, split: str, items: list[tuple[str, Example | None]]) -> list[Example]:
        self.skipped[split] = [pid for pid, ex in items if ex is None]
        return [ex for _, ex in items if ex is not None]

    def read_split(self, split: str) -> list[Example]:
        """The numeric problems of ``asdiv/test.jsonl``; the others go to ``skipped``."""
        path = self.path(split)
        items = []
        for line, record in read_jsonl_records(path):
            where = f"{path}:{line}"
            pid = str(field(record, "idx", where, int))
            items.append((pid, self._example(record, where, pid)))
        return self._keep(split, items)

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        """A row of EleutherAI/asdiv (``body``, ``question``, ``solution_type``, ``answer``,
        ``formula``); a non-numeric answer is a DataError here (``load`` skips those rows)."""
        where = self.hub_where(split, index)
        example = self._example(row, where, f"{split}/{index}")
        if example is None:
            raise DataError(f"{where}: field 'answer' is not a number: {row.get('answer')!r}")
        return example

    def load(self, split: str | None = None, n: int | None = None) -> list[Example]:
        """Like the base ``load``, skipping hub rows whose answer is not a number."""
        split = split or self.test_split
        if self.source == "hub" and split in self.splits() and split not in self._cache:
            rows = benchmark.load_hub(self.hub_name or "", self.hub_config, self.hub_splits[split])
            items = [
                (f"{split}/{i}", self._example(row, self.hub_where(split, i), f"{split}/{i}"))
                for i, row in enumerate(rows)
            ]
            examples = self._keep(split, items)
            if not examples:
                raise DataError(f"task {self.name}: hub split {split!r} has no numeric answers")
            self._cache[split] = examples
        return super().load(split, n)
