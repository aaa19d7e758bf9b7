"""Multiple-choice and yes/no benchmarks.

Multiple choice (``kind = "choice"``): ``answer`` is the gold letter and ``meta["choices"]`` the
option texts in order. Tasks: ``aqua``, ``csqa``, ``obqa``, ``siqa``, ``piqa``,
``arc_challenge`` and ``mmlu`` (``mmlu:stem``, ``mmlu:abstract_algebra``, ...).
Yes/no (``kind = "yesno"``): ``strategyqa``, whose ``answer`` is ``"yes"`` or ``"no"``.

Judging is in :mod:`selftrain.verify.choices`: ``extract`` reads a letter (or yes/no) and
``is_correct`` also accepts the exact text of the gold option when no explicit letter is given.
For log-likelihood scoring, ``choice_continuations(ex)[i]`` is scored after the prompt and
``choice_answers(ex)[i]`` is the answer it stands for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar

from selftrain.verify.choices import extract_choice_letter, extract_yes_no, judge_choice
from selftrain.tasks import register
from selftrain.tasks.base import Example
from selftrain.tasks.benchmark import BenchmarkTask, letters
from selftrain.tasks.data import (
    DataError,
    field,
    read_csv_rows,
    read_json_array,
    read_jsonl_records,
    read_lines,
    require_file,
)

__all__ = [
    "MMLU",
    "MMLU_GROUPS",
    "MMLU_SUBJECTS",
    "PIQA",
    "AQuA",
    "ArcChallenge",
    "ChoiceTask",
    "CommonsenseQA",
    "OpenBookQA",
    "SocialIQA",
    "StrategyQA",
    "mmlu_subjects",
]


def _gold_index(value: str, labels: Sequence[str], where: str, name: str) -> int:
    """Position of the gold label ``value`` among ``labels``, or a DataError naming ``name``."""
    key = value.strip()
    if key not in labels:
        raise DataError(
            f"{where}: field {name!r} is {value!r}, not one of the labels {', '.join(labels)}"
        )
    return list(labels).index(key)


def _choice_example(
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


def _hub_labeled_choices(row: dict[str, Any], where: str) -> tuple[list[str], list[str]]:
    """``(labels, texts)`` of a hub row's ``choices: {"label": [...], "text": [...]}``."""
    texts = field(row, "choices.text", where, list)
    labels = field(row, "choices.label", where, list)
    if len(texts) != len(labels):
        raise DataError(f"{where}: field 'choices' has {len(texts)} texts but {len(labels)} labels")
    return [str(label).strip() for label in labels], [str(text) for text in texts]


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
    """AQuA-RAT algebra word problems with five options and a worked rationale (test only)."""

    name: ClassVar[str] = "aqua"
    files: ClassVar[dict[str, str]] = {"test": "aqua/test.json"}  # JSONL despite the name
    hub_name: ClassVar[str | None] = "deepmind/aqua_rat"
    hub_config: ClassVar[str | None] = "raw"
    hub_splits: ClassVar[dict[str, str]] = {"test": "test"}
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
        gold = _gold_index(field(record, "correct", where), labels, where, "correct")
        rationale = record.get("rationale")
        return _choice_example(
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
    files: ClassVar[dict[str, str]] = {
        "train": "csqa/train_rand_split.jsonl",
        "validation": "csqa/dev_rand_split.jsonl",
    }
    hub_name: ClassVar[str | None] = "tau/commonsense_qa"
    hub_splits: ClassVar[dict[str, str]] = {"train": "train", "validation": "validation"}
    test_split: ClassVar[str] = "validation"
    train_split: ClassVar[str | None] = "train"
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
            gold = _gold_index(field(record, "answerKey", where), labels, where, "answerKey")
            record_id = field(record, "id", where)
            examples.append(
                _choice_example(
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
        labels, texts = _hub_labeled_choices(row, where)
        gold = _gold_index(field(row, "answerKey", where), labels, where, "answerKey")
        return _choice_example(
            f"{self.name}/{split}/{row.get('id', index)}",
            field(row, "question", where),
            texts,
            gold,
            where,
            concept=row.get("question_concept"),
        )


# -- LLM-Adapters instruction format (OpenBookQA, Social IQa, ARC-Challenge) -----------------

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
                _choice_example(f"{self.name}/{split}/{i}", question, choices, gold, where)
            )
        return examples


@register("obqa")
class OpenBookQA(AdaptersChoiceTask):
    """OpenBookQA (four options) in the LLM-Adapters format."""

    name: ClassVar[str] = "obqa"
    files: ClassVar[dict[str, str]] = {"train": "obqa/train.json", "test": "obqa/test.json"}
    hub_name: ClassVar[str | None] = "allenai/openbookqa"
    hub_config: ClassVar[str | None] = "main"
    hub_splits: ClassVar[dict[str, str]] = {"train": "train", "test": "test"}
    train_split: ClassVar[str | None] = "train"
    n_options: ClassVar[int] = 4

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        where = self.hub_where(split, index)
        labels, texts = _hub_labeled_choices(row, where)
        gold = _gold_index(field(row, "answerKey", where), labels, where, "answerKey")
        return _choice_example(
            f"{self.name}/{split}/{index}", field(row, "question_stem", where), texts, gold, where
        )


@register("siqa")
class SocialIQA(AdaptersChoiceTask):
    """Social IQa (three options) in the LLM-Adapters format; the hub's validation split is
    our test split (the same 1,954 questions)."""

    name: ClassVar[str] = "siqa"
    files: ClassVar[dict[str, str]] = {"test": "siqa/test.json"}
    hub_name: ClassVar[str | None] = "allenai/social_i_qa"
    hub_splits: ClassVar[dict[str, str]] = {"test": "validation"}
    n_options: ClassVar[int] = 3

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        where = self.hub_where(split, index)
        question = f"{field(row, 'context', where).strip()} {field(row, 'question', where).strip()}"
        texts = [field(row, f"answer{label}", where) for label in "ABC"]
        gold = _gold_index(
            str(field(row, "label", where, (str, int))), ["1", "2", "3"], where, "label"
        )
        return _choice_example(f"{self.name}/{split}/{index}", question, texts, gold, where)


@register("arc_challenge")
class ArcChallenge(AdaptersChoiceTask):
    """ARC-Challenge (three to five options, mostly four) in the LLM-Adapters format."""

    name: ClassVar[str] = "arc_challenge"
    files: ClassVar[dict[str, str]] = {
        "train": "arc_challenge/train.json",
        "test": "arc_challenge/test.json",
    }
    hub_name: ClassVar[str | None] = "allenai/ai2_arc"
    hub_config: ClassVar[str | None] = "ARC-Challenge"
    hub_splits: ClassVar[dict[str, str]] = {"train": "train", "test": "test"}
    train_split: ClassVar[str | None] = "train"
    n_options: ClassVar[int] = 5

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        # Labels are "A".."E" or, for some questions, "1".."5"; either way we re-letter by position.
        where = self.hub_where(split, index)
        labels, texts = _hub_labeled_choices(row, where)
        gold = _gold_index(field(row, "answerKey", where), labels, where, "answerKey")
        return _choice_example(
            f"{self.name}/{split}/{row.get('id', index)}",
            field(row, "question", where),
            texts,
            gold,
            where,
        )


# -- PIQA ------------------------------------------------------------------------------------


@register("piqa")
class PIQA(ChoiceTask):
    """PIQA: a goal and two solutions (A = sol1, B = sol2). Only the validation split has
    public labels (``valid-labels.lst``, one 0/1 per line)."""

    name: ClassVar[str] = "piqa"
    files: ClassVar[dict[str, str]] = {"validation": "piqa/valid.jsonl"}
    label_files: ClassVar[dict[str, str]] = {"validation": "piqa/valid-labels.lst"}
    hub_name: ClassVar[str | None] = "ybisk/piqa"
    hub_splits: ClassVar[dict[str, str]] = {"validation": "validation"}
    test_split: ClassVar[str] = "validation"
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
        return _choice_example(
            f"{self.name}/{split}/{index}", field(record, "goal", where), choices, label, where
        )


# -- StrategyQA ------------------------------------------------------------------------------


@register("strategyqa")
class StrategyQA(BenchmarkTask):
    """StrategyQA yes/no questions (the BIG-bench copy of the 2,290 labelled questions);
    ``rationale`` is the supporting facts. On the hub these are tasksource/strategy-qa's
    ``train`` split, which is our ``test`` split."""

    name: ClassVar[str] = "strategyqa"
    kind: ClassVar[str] = "yesno"
    files: ClassVar[dict[str, str]] = {"test": "strategyqa/task.json"}
    hub_name: ClassVar[str | None] = "tasksource/strategy-qa"
    hub_splits: ClassVar[dict[str, str]] = {"test": "train"}

    def read_split(self, split: str) -> list[Example]:
        path = require_file(self.root, self.files[split])
        examples = []
        for i, (index, record) in enumerate(read_json_array(path, key="examples")):
            where = f"{path}: examples[{index - 1}]"
            scores = field(record, "target_scores", where, dict)
            answer = self._gold_from_scores(scores, where)
            target = record.get("target")
            rationale = None
            if isinstance(target, str):
                head, _, rest = target.strip().partition(".")
                if head.strip().lower() in ("yes", "no"):
                    if head.strip().lower() != answer:
                        raise DataError(
                            f"{where}: field 'target' starts with {head!r} but "
                            f"'target_scores' marks {answer!r}"
                        )
                    rationale = rest.strip() or None
            examples.append(
                self._example(
                    f"{self.name}/{split}/{i}",
                    field(record, "input", where),
                    answer,
                    rationale,
                    where,
                )
            )
        return examples

    @staticmethod
    def _gold_from_scores(scores: dict[str, Any], where: str) -> str:
        marked = [key for key in ("Yes", "No") if scores.get(key) == 1]
        if len(marked) != 1 or set(scores) != {"Yes", "No"}:
            raise DataError(
                f"{where}: field 'target_scores' should be {{'Yes': 1, 'No': 0}} or "
                f"{{'Yes': 0, 'No': 1}}, got {scores!r}"
            )
        return marked[0].lower()

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        where = self.hub_where(split, index)
        value = field(row, "answer", where, (bool, str))
        if isinstance(value, str):
            if value.strip().lower() not in ("yes", "no", "true", "false"):
                raise DataError(f"{where}: field 'answer' should be yes/no, got {value!r}")
            value = value.strip().lower() in ("yes", "true")
        facts = row.get("facts")
        rationale = " ".join(f.strip() for f in facts) if isinstance(facts, list) else None
        return self._example(
            f"{self.name}/{split}/{row.get('qid', index)}",
            field(row, "question", where),
            "yes" if value else "no",
            rationale,
            where,
        )

    @staticmethod
    def _example(
        example_id: str, question: str, answer: str, rationale: str | None, where: str
    ) -> Example:
        if not question.strip():
            raise DataError(f"{where}: the question is empty")
        return Example(id=example_id, question=question.strip(), answer=answer, rationale=rationale)

    def extract(self, completion: str) -> str | None:
        """ "yes" / "no" from "The answer is yes", a leading "No, ..." or a trailing "... yes."."""
        return extract_yes_no(completion)

    def choice_continuations(self, example: Example) -> Sequence[str]:
        """The two continuations scored by log-likelihood: ``[" yes", " no"]``."""
        return [" yes", " no"]

    def choice_answers(self, example: Example) -> list[str]:
        """``["yes", "no"]``, aligned with :meth:`choice_continuations`."""
        return ["yes", "no"]


# -- MMLU ------------------------------------------------------------------------------------

MMLU_GROUPS = ("stem", "humanities", "social_sciences", "other")

# Subject -> group, from the categories of the original release (hendrycks/test,
# categories.py). lm-eval-harness differs in one subject: it puts anatomy under STEM.
MMLU_SUBJECTS: dict[str, str] = {
    "abstract_algebra": "stem",
    "anatomy": "other",
    "astronomy": "stem",
    "business_ethics": "other",
    "clinical_knowledge": "other",
    "college_biology": "stem",
    "college_chemistry": "stem",
    "college_computer_science": "stem",
    "college_mathematics": "stem",
    "college_medicine": "other",
    "college_physics": "stem",
    "computer_security": "stem",
    "conceptual_physics": "stem",
    "econometrics": "social_sciences",
    "electrical_engineering": "stem",
    "elementary_mathematics": "stem",
    "formal_logic": "humanities",
    "global_facts": "other",
    "high_school_biology": "stem",
    "high_school_chemistry": "stem",
    "high_school_computer_science": "stem",
    "high_school_european_history": "humanities",
    "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences",
    "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem",
    "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem",
    "high_school_psychology": "social_sciences",
    "high_school_statistics": "stem",
    "high_school_us_history": "humanities",
    "high_school_world_history": "humanities",
    "human_aging": "other",
    "human_sexuality": "social_sciences",
    "international_law": "humanities",
    "jurisprudence": "humanities",
    "logical_fallacies": "humanities",
    "machine_learning": "stem",
    "management": "other",
    "marketing": "other",
    "medical_genetics": "other",
    "miscellaneous": "other",
    "moral_disputes": "humanities",
    "moral_scenarios": "humanities",
    "nutrition": "other",
    "philosophy": "humanities",
    "prehistory": "humanities",
    "professional_accounting": "other",
    "professional_law": "humanities",
    "professional_medicine": "other",
    "professional_psychology": "social_sciences",
    "public_relations": "social_sciences",
    "security_studies": "social_sciences",
    "sociology": "social_sciences",
    "us_foreign_policy": "social_sciences",
    "virology": "other",
    "world_religions": "humanities",
}


def mmlu_subjects(subset: str | None = None) -> list[str]:
    """The subjects of an MMLU subset: None (or "all") = all 57, a group name
    (:data:`MMLU_GROUPS`) or a single subject."""
    if subset is None or subset == "all":
        return sorted(MMLU_SUBJECTS)
    if subset in MMLU_GROUPS:
        return sorted(s for s, group in MMLU_SUBJECTS.items() if group == subset)
    if subset in MMLU_SUBJECTS:
        return [subset]
    raise ValueError(
        f"unknown MMLU subset {subset!r}; use 'all', a group ({', '.join(MMLU_GROUPS)}) "
        f"or a subject ({', '.join(sorted(MMLU_SUBJECTS))})"
    )


@register("mmlu")
class MMLU(ChoiceTask):
    """MMLU: four-option questions in 57 subjects, read from ``mmlu/<split>/<subject>_<split>.csv``
    (no header: question, A, B, C, D, answer). ``dev`` (5 per subject) gives the few-shot
    examples; ``subset`` picks a group or a subject (``get("mmlu:stem")``)."""

    name: ClassVar[str] = "mmlu"
    files: ClassVar[dict[str, str]] = {
        "dev": "mmlu/dev",
        "validation": "mmlu/val",
        "test": "mmlu/test",
    }
    hub_name: ClassVar[str | None] = "cais/mmlu"
    hub_config: ClassVar[str | None] = "all"
    hub_splits: ClassVar[dict[str, str]] = {
        "dev": "dev",
        "validation": "validation",
        "test": "test",
    }
    train_split: ClassVar[str | None] = "dev"
    n_options: ClassVar[int] = 4

    def __init__(self, subset: str | None = None, **kwargs: Any) -> None:
        """``subset``: None for all subjects, a group or a subject name; other keywords as
        for :class:`BenchmarkTask`."""
        self.subjects = mmlu_subjects(subset)
        self.subset = None if subset in (None, "all") else subset
        super().__init__(**kwargs)
        # Per instance: a subset's name, and on the hub one subject's own config.
        self.name = f"mmlu:{self.subset}" if self.subset else "mmlu"  # type: ignore[misc]
        if self.subset in MMLU_SUBJECTS:
            self.hub_config = self.subset  # type: ignore[misc]

    def read_split(self, split: str) -> list[Example]:
        folder = self.files[split]
        suffix = Path(folder).name
        examples = []
        for subject in self.subjects:
            path = require_file(self.root, f"{folder}/{subject}_{suffix}.csv")
            rows = [(line, row) for line, row in read_csv_rows(path) if row]
            for i, (line, row) in enumerate(rows):
                where = f"{path}:{line}"
                if len(row) != 6:
                    raise DataError(
                        f"{where}: expected 6 columns (question, A, B, C, D, answer), "
                        f"got {len(row)}"
                    )
                gold = _gold_index(row[5], letters(4), where, "answer (column 6)")
                examples.append(
                    _choice_example(
                        f"mmlu/{split}/{subject}/{i}",
                        row[0],
                        row[1:5],
                        gold,
                        where,
                        subject=subject,
                    )
                )
        return examples

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        where = self.hub_where(split, index)
        choices = field(row, "choices", where, list)
        answer = field(row, "answer", where, (int, str))
        labels = letters(len(choices))
        gold = (
            answer
            if isinstance(answer, int) and 0 <= answer < len(choices)
            else _gold_index(str(answer), labels, where, "answer")
        )
        subject = row.get("subject") or self.hub_config or ""
        return _choice_example(
            f"mmlu/{split}/{subject}/{index}",
            field(row, "question", where),
            [str(c) for c in choices],
            gold,
            where,
            subject=subject,
        )

    def load(self, split: str | None = None, n: int | None = None) -> list[Example]:
        """As :meth:`BenchmarkTask.load`; from the hub's "all" config, only this subset's rows."""
        split = split or self.test_split
        if self.source == "hub" and split in self.hub_splits and split not in self._cache:
            super().load(split, 0)  # reads and caches every row of the config
            wanted = set(self.subjects)
            kept = [ex for ex in self._cache[split] if ex.meta.get("subject") in wanted]
            if not kept:
                raise DataError(f"{self.hub_name} split {split!r} has no rows for {self.name}")
            self._cache[split] = kept
        return super().load(split, n)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "subjects": len(self.subjects)}
