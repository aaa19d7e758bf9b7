"""Multiple-choice benchmarks: the shared :class:`ChoiceTask` and ``aqua``, ``csqa``, ``piqa``.

``kind = "choice"``: ``answer`` is the gold letter and ``meta["choices"]`` the option texts in
order. The other multiple-choice families are in :mod:`selftrain.tasks.llm_adapters`
(``obqa``, ``siqa``, ``arc_challenge``) and :mod:`selftrain.tasks.mmlu`; the yes/no one
(``strategyqa``) is in :mod:`selftrain.tasks.yesno`.

Judging is in :mod:`selftrain.verify.choices`: ``extract`` reads a letter and ``is_correct``
also accepts the exact text of the gold option when no explicit letter is given. For
log-likelihood scoring, ``choice_continuations(ex)[i]`` is scored after the prompt and
``choice_answers(ex)[i]`` is the answer it stands for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from selftrain.tasks import register
from selftrain.tasks.base import Example
from selftrain.tasks.benchmark import BenchmarkTask, letters
from selftrain.tasks.data import (
    DataError,
    field,
    read_json_array,
    read_jsonl_records,
    read_lines,
    require_file,
)
from selftrain.verify.choices import extract_choice_letter, judge_choice

__all__ = [
    "PIQA",
    "AQuA",
    "ChoiceTask",
    "CommonsenseQA",
    "choice_example",
    "gold_index",
    "labeled_hub_example",
]


def gold_index(value: str, labels: Sequence[str], where: str, name: str) -> int:
    """Position of the gold label ``value`` among ``labels``, or a DataError naming ``name``."""
    key = value.strip()
    if key not in labels:
        raise DataError(
            f"{where}: field {name!r} is {value!r}, not one of the labels {', '.join(labels)}"
        )
    return list(labels).index(key)


def choice_example(
    example_id: str,
    question: str,
    choices: Sequence[str],
    gold: int,
    where: str,
    rationale: str | None = None,
    **meta: Any,
) -> Example:
    """A multiple-choice Example; empty questions or options are DataErrors."""
    question = question.strip()
    if not question:
        raise DataError(f"{where}: the question is empty")
    texts = [text.strip() for text in choices]
    if len(texts) < 2:
        raise DataError(f"{where}: expected at least 2 options, got {len(texts)}")
    for label, text in zip(letters(len(texts)), texts, strict=True):
        if not text:
            raise DataError(f"{where}: option {label} is empty")
    rationale = rationale.strip() if rationale else None
    return Example(
        id=example_id,
        question=question,
        answer=letters(len(texts))[gold],
        rationale=rationale or None,
        meta={"choices": texts, **meta},
    )


def labeled_hub_example(
    row: dict[str, Any], where: str, example_id: str, question_key: str, **meta: Any
) -> Example:
    """A multiple-choice Example from a hub row with ``choices: {"label": [...], "text":
    [...]}``, the gold label in ``answerKey`` and the question in ``row[question_key]``.
    Options are re-lettered by position, whatever their labels ("A".."E" or "1".."5")."""
    texts = field(row, "choices.text", where, list)
    labels = [str(label).strip() for label in field(row, "choices.label", where, list)]
    if len(texts) != len(labels):
        raise DataError(f"{where}: field 'choices' has {len(texts)} texts but {len(labels)} labels")
    gold = gold_index(field(row, "answerKey", where), labels, where, "answerKey")
    question = field(row, question_key, where)
    return choice_example(example_id, question, [str(text) for text in texts], gold, where, **meta)


class ChoiceTask(BenchmarkTask):
    """A multiple-choice benchmark: letter answers, option texts in ``meta["choices"]``."""

    kind: ClassVar[str] = "choice"
    n_options: ClassVar[int] = 5  # the most options any item has; later letters are ignored

    def extract(self, completion: str) -> str | None:
        """The option letter the completion gives ("The answer is B", "(B)", ...), or None."""
        return extract_choice_letter(completion, self.n_options)

    def is_correct(self, completion: str, example: Example) -> bool:
        """Right letter, or (when no explicit letter is given) the gold option's exact text."""
        return judge_choice(completion, example.answer, example.meta["choices"])

    def _read_records(self, split: str) -> tuple[Path, list[tuple[str, dict[str, Any]]]]:
        """``(path, [(where, record), ...])`` of a JSON array or JSONL file."""
        path = require_file(self.root, self.files[split])
        if path.suffix == ".jsonl":
            return path, [(f"{path}:{line}", rec) for line, rec in read_jsonl_records(path)]
        return path, [(f"{path}: record {i}", rec) for i, rec in read_json_array(path)]


# -- AQuA ------------------------------------------------------------------------------------

_AQUA_OPTION = re.compile(r"\s*(?P<label>[A-Z])\s*\)(?P<text>.*)", re.DOTALL)


@register("aqua")
class AQuA(ChoiceTask):
    """AQuA-RAT algebra word problems with five options and a worked rationale (test only);
    the local file ``aqua/test.json`` is JSONL despite its name."""

    name: ClassVar[str] = "aqua"
    n_options: ClassVar[int] = 5

    def read_split(self, split: str) -> list[Example]:
        path = require_file(self.root, self.files[split])
        return [
            self._parse(record, f"{self.name}/{split}/{i}", f"{path}:{line}")
            for i, (line, record) in enumerate(read_jsonl_records(path))
        ]

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        return self._parse(row, f"{self.name}/{split}/{index}", self.hub_where(split, index))

    def _parse(self, record: dict[str, Any], example_id: str, where: str) -> Example:
        options = field(record, "options", where, list)
        choices = []
        for k, option in enumerate(options):
            label = chr(ord("A") + k)
            match = _AQUA_OPTION.fullmatch(option) if isinstance(option, str) else None
            if match is None or match.group("label") != label:
                raise DataError(
                    f"{where}: field 'options' item {k + 1} should start with '{label})', "
                    f"got {option!r}"
                )
            choices.append(match.group("text"))
        labels = letters(len(choices))
        gold = gold_index(field(record, "correct", where), labels, where, "correct")
        rationale = record.get("rationale")
        return choice_example(
            example_id,
            field(record, "question", where),
            choices,
            gold,
            where,
            rationale if isinstance(rationale, str) else None,
        )


# -- CommonsenseQA ---------------------------------------------------------------------------


@register("csqa")
class CommonsenseQA(ChoiceTask):
    """CommonsenseQA (five options). The test file has no answers, so the validation (dev)
    split is the one evaluated."""

    name: ClassVar[str] = "csqa"
    n_options: ClassVar[int] = 5

    def read_split(self, split: str) -> list[Example]:
        _, records = self._read_records(split)
        examples = []
        for where, record in records:
            items = field(record, "question.choices", where, list)
            labels, texts = [], []
            for k, item in enumerate(items):
                item_where = f"{where}: question.choices[{k}]"
                if not isinstance(item, dict):
                    raise DataError(f"{item_where}: expected an object with 'label' and 'text'")
                labels.append(field(item, "label", item_where).strip())
                texts.append(field(item, "text", item_where))
            gold = gold_index(field(record, "answerKey", where), labels, where, "answerKey")
            record_id = field(record, "id", where)
            examples.append(
                choice_example(
                    f"{self.name}/{split}/{record_id}",
                    field(record, "question.stem", where),
                    texts,
                    gold,
                    where,
                    concept=record["question"].get("question_concept"),
                )
            )
        return examples

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        where = self.hub_where(split, index)
        example_id = f"{self.name}/{split}/{row.get('id', index)}"
        return labeled_hub_example(
            row, where, example_id, "question", concept=row.get("question_concept")
        )


# -- PIQA ------------------------------------------------------------------------------------


@register("piqa")
class PIQA(ChoiceTask):
    """PIQA: a goal and two solutions (A = sol1, B = sol2). Only the validation split has
    public labels (``valid-labels.lst``, one 0/1 per line)."""

    name: ClassVar[str] = "piqa"
    label_files: ClassVar[dict[str, str]] = {"validation": "piqa/valid-labels.lst"}
    n_options: ClassVar[int] = 2

    def read_split(self, split: str) -> list[Example]:
        path = require_file(self.root, self.files[split])
        labels_path = require_file(self.root, self.label_files[split])
        records = list(read_jsonl_records(path))
        lines = read_lines(labels_path)
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) != len(records):
            raise DataError(
                f"{labels_path}: has {len(lines)} labels but {path} has {len(records)} "
                "records; the two files must be aligned line by line"
            )
        examples = []
        for i, ((line, record), label) in enumerate(zip(records, lines, strict=True)):
            where = f"{path}:{line}"
            if label.strip() not in ("0", "1"):
                raise DataError(f"{labels_path}:{i + 1}: label should be 0 or 1, got {label!r}")
            examples.append(self._example(record, split, i, where, int(label)))
        return examples

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        where = self.hub_where(split, index)
        label = field(row, "label", where, (int, str))
        if str(label).strip() not in ("0", "1"):
            raise DataError(f"{where}: field 'label' should be 0 or 1, got {label!r}")
        return self._example(row, split, index, where, int(label))

    def _example(
        self, record: dict[str, Any], split: str, index: int, where: str, label: int
    ) -> Example:
        choices = [field(record, "sol1", where), field(record, "sol2", where)]
        return choice_example(
            f"{self.name}/{split}/{index}", field(record, "goal", where), choices, label, where
        )
