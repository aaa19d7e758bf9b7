"""Multiple-choice benchmarks stored in the LLM-Adapters instruction format: ``obqa``
(OpenBookQA), ``siqa`` (Social IQa) and ``arc_challenge`` (ARC-Challenge).

Each record's ``instruction`` holds the question and its options, and ``answer`` names the
gold option (see :func:`parse_adapters_instruction`). Hub copies use each dataset's own schema.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any, ClassVar

from selftrain.tasks import register
from selftrain.tasks.base import Example
from selftrain.tasks.choice import ChoiceTask, choice_example, gold_index, labeled_hub_example
from selftrain.tasks.data import DataError, field

__all__ = [
    "AdaptersChoiceTask",
    "ArcChallenge",
    "OpenBookQA",
    "SocialIQA",
    "parse_adapters_instruction",
]

_ADAPTERS_LAYOUT = re.compile(
    r"Please choose the correct answer to the question: (?P<question>.*?)\n\n"
    r"(?P<options>Answer1: .*)\n\n"
    r"Answer format: (?P<format>answer\d+(?:/answer\d+)*)\s*",
    re.DOTALL,
)
_ADAPTERS_GOLD = re.compile(r"\s*answer(?P<k>\d+)\s*")


def parse_adapters_instruction(record: dict[str, Any], where: str) -> tuple[str, list[str], int]:
    """``(question, options, gold index)`` of one LLM-Adapters record: ``instruction`` is
    "Please choose the correct answer to the question: Q\\n\\nAnswer1: a Answer2: b ...
    \\n\\nAnswer format: answer1/answer2/..." and ``answer`` is "answerN"."""
    instruction = field(record, "instruction", where)
    layout = _ADAPTERS_LAYOUT.fullmatch(instruction)
    if layout is None:
        raise DataError(
            f"{where}: field 'instruction' does not have the LLM-Adapters layout "
            "'Please choose the correct answer to the question: ...\\n\\nAnswer1: ... "
            "Answer2: ...\\n\\nAnswer format: answer1/answer2/...'"
        )
    n = layout.group("format").count("/") + 1
    if layout.group("format") != "/".join(f"answer{k}" for k in range(1, n + 1)):
        raise DataError(
            f"{where}: field 'instruction' has an unexpected answer format "
            f"{layout.group('format')!r}"
        )
    options = layout.group("options")
    starts = [0]
    for k in range(2, n + 1):
        position = options.find(f" Answer{k}: ", starts[-1])
        if position < 0:
            raise DataError(f"{where}: field 'instruction' lists no option 'Answer{k}:'")
        starts.append(position + 1)
    starts.append(len(options) + 1)
    choices = [
        options[start + len(f"Answer{k}: ") : end - 1]
        for k, (start, end) in enumerate(pairwise(starts), start=1)
    ]
    answer = field(record, "answer", where)
    gold = _ADAPTERS_GOLD.fullmatch(answer)
    if gold is None or not 1 <= int(gold.group("k")) <= n:
        raise DataError(
            f"{where}: field 'answer' should be one of answer1..answer{n}, got {answer!r}"
        )
    return layout.group("question"), choices, int(gold.group("k")) - 1


class AdaptersChoiceTask(ChoiceTask):
    """A benchmark stored in the LLM-Adapters instruction format (see
    :func:`parse_adapters_instruction`)."""

    def read_split(self, split: str) -> list[Example]:
        _, records = self._read_records(split)
        examples = []
        for i, (where, record) in enumerate(records):
            question, choices, gold = parse_adapters_instruction(record, where)
            examples.append(
                choice_example(f"{self.name}/{split}/{i}", question, choices, gold, where)
            )
        return examples


@register("obqa")
class OpenBookQA(AdaptersChoiceTask):
    """OpenBookQA (four options) in the LLM-Adapters format."""

    name: ClassVar[str] = "obqa"
    n_options: ClassVar[int] = 4

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        where = self.hub_where(split, index)
        return labeled_hub_example(row, where, f"{self.name}/{split}/{index}", "question_stem")


@register("siqa")
class SocialIQA(AdaptersChoiceTask):
    """Social IQa (three options) in the LLM-Adapters format; the hub's validation split is
    our test split (the same 1,954 questions)."""

    name: ClassVar[str] = "siqa"
    n_options: ClassVar[int] = 3

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        where = self.hub_where(split, index)
        question = f"{field(row, 'context', where).strip()} {field(row, 'question', where).strip()}"
        texts = [field(row, f"answer{label}", where) for label in "ABC"]
        gold = gold_index(
            str(field(row, "label", where, (str, int))), ["1", "2", "3"], where, "label"
        )
        return choice_example(f"{self.name}/{split}/{index}", question, texts, gold, where)


@register("arc_challenge")
class ArcChallenge(AdaptersChoiceTask):
    """ARC-Challenge (three to five options, mostly four) in the LLM-Adapters format."""

    name: ClassVar[str] = "arc_challenge"
    n_options: ClassVar[int] = 5

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        where = self.hub_where(split, index)
        example_id = f"{self.name}/{split}/{row.get('id', index)}"
        return labeled_hub_example(row, where, example_id, "question")
