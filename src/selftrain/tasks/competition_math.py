"""Competition mathematics: MATH (Hendrycks et al.) and its MATH-500 test subset.

Files under the data directory (see its SOURCES.md):

- ``math/train.jsonl`` (7,500) and ``math/test.jsonl`` (5,000): ``problem``, ``level``
  (``"Level 3"``), ``type`` (the subject), ``solution``; the gold answer is the content of the
  last ``\\boxed{...}`` in the solution. Two train solutions box nothing; they are skipped,
  so the train split has 7,498 problems.
- ``math/math500_test.jsonl`` (500): ``problem``, ``solution``, ``answer``, ``subject``,
  ``level`` (an int), ``unique_id``; the gold answer is ``answer``.

Tasks: ``math`` (full MATH), ``math:math500`` or ``math500`` (MATH-500 as the test split, the
full MATH train split for few-shot examples and training), and ``math:<subject>`` (for
example ``math:number_theory``: both splits restricted to one subject).

Judging: :meth:`MathTask.extract` and :meth:`MathTask.is_correct` use
:func:`selftrain.verify.math.extract_answer` and :func:`selftrain.verify.math.answers_match`
(a normalised string comparison, then math-verify with guards).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from selftrain.tasks import register
from selftrain.tasks.base import Example
from selftrain.tasks.benchmark import BenchmarkTask
from selftrain.tasks.data import DataError, field, load_hub, read_jsonl_records, require_file
from selftrain.verify.math import answers_match, boxed_contents, extract_answer

__all__ = ["MATH_SUBJECTS", "MathTask", "math500", "subject_key"]

# Subject key -> the name used in the data's ``type`` / ``subject`` fields. The keys are
# also the configs of the hub's EleutherAI/hendrycks_math.
MATH_SUBJECTS: dict[str, str] = {
    "algebra": "Algebra",
    "counting_and_probability": "Counting & Probability",
    "geometry": "Geometry",
    "intermediate_algebra": "Intermediate Algebra",
    "number_theory": "Number Theory",
    "prealgebra": "Prealgebra",
    "precalculus": "Precalculus",
}
MATH500 = "math500"
MATH500_FILE = "math/math500_test.jsonl"
MATH500_HUB = "HuggingFaceH4/MATH-500"

_LEVEL_RE = re.compile(r"(\d+)")

logger = logging.getLogger(__name__)


def subject_key(name: str) -> str:
    """``"Counting & Probability"`` -> ``"counting_and_probability"`` (case/space-insensitive)."""
    text = name.strip().lower().replace("&", " and ")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def _level(value: str | int) -> int | None:
    """``"Level 3"`` or ``3`` -> 3; ``"Level ?"`` (two train items) -> None."""
    if isinstance(value, int):
        return value
    match = _LEVEL_RE.search(value)
    return int(match.group(1)) if match else None


@register("math")
class MathTask(BenchmarkTask):
    """MATH competition problems judged with math-verify (:mod:`selftrain.verify.math`).

    ``subset``: None (all 12,500 problems), ``"math500"`` (the 500-problem test subset of
    Lightman et al.) or a subject key such as ``"number_theory"``. The hub copy
    (``sources.json``) has one config per subject; MATH-500's is ``MATH500_HUB``."""

    name = "math"
    kind = "math"

    def __init__(self, *, subset: str | None = None, **kwargs: Any) -> None:
        """``subset`` as in the class docstring; other arguments as :class:`BenchmarkTask`."""
        super().__init__(**kwargs)
        self.subset: str | None = None
        self.subject: str | None = None  # subject key when the task is one subject
        self.skipped: dict[str, list[str]] = {}  # split -> "file:line" of unanswerable records
        if subset is not None and subset.strip():
            key = subject_key(subset)
            if key == MATH500:
                self.subset = MATH500
            elif key in MATH_SUBJECTS:
                self.subset = self.subject = key
            else:
                valid = ", ".join([MATH500, *MATH_SUBJECTS])
                raise ValueError(f"unknown MATH subset {subset!r}; valid subsets: {valid}")
        self.name = f"math:{self.subset}" if self.subset else "math"

    def path(self, split: str) -> str:
        """The file of ``split`` relative to the data directory."""
        if self._is_math500(split):
            return MATH500_FILE
        return self.files[split]

    def split_location(self, split: str) -> str:
        return (
            super().split_location(split)
            if self.source == "hub"
            else str(self.root / self.path(split))
        )

    def read_split(self, split: str) -> list[Example]:
        """Examples of ``split`` from the data directory (restricted to the subject, if any).

        Records whose solution boxes nothing (``\\boxed{}``: two train problems,
        number_theory/7115 and 7117) have no gold answer; they are skipped with a warning
        and listed in :attr:`skipped`."""
        relative = self.path(split)
        path = require_file(self.root, relative)
        examples = []
        for line, record in read_jsonl_records(path):
            where = f"{path}:{line}"
            example = self.parse_record(record, where, split, line - 1, self._is_math500(split))
            if example is not None and self._keep(example):
                examples.append(example)
        return examples

    def load(self, split: str | None = None, n: int | None = None) -> list[Example]:
        """As :meth:`BenchmarkTask.load`; from the hub, full MATH is the union of
        EleutherAI/hendrycks_math's seven subject configs."""
        split = split or self.test_split
        if self.source == "hub" and split in self.splits() and split not in self._cache:
            examples: list[Example] = []
            for name, config in self._hub_sources(split):
                rows = load_hub(name, config, self.hub_splits[split])
                for i, row in enumerate(rows):
                    example = self.parse_hub(row, split, i)
                    if example is not None and self._keep(example):
                        examples.append(example)
            self._cache[split] = examples
        return super().load(split, n)

    def _is_math500(self, split: str) -> bool:
        return split == "test" and self.subset == MATH500

    def _hub_sources(self, split: str) -> list[tuple[str, str | None]]:
        if self._is_math500(split):
            return [(MATH500_HUB, None)]
        configs = [self.subject] if self.subject else list(MATH_SUBJECTS)
        return [(self.hub_name or "", config) for config in configs]

    def _keep(self, example: Example) -> bool:
        return self.subject is None or subject_key(example.meta["subject"]) == self.subject

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example | None:
        """A row of HuggingFaceH4/MATH-500 (``answer``, ``subject``, ``unique_id``) or of
        EleutherAI/hendrycks_math (``type``, answer boxed in ``solution``); None for a
        solution whose box is empty."""
        math500 = self._is_math500(split)
        source = (
            MATH500_HUB if math500 else f"{self.hub_name}/{subject_key(str(row.get('type', '')))}"
        )
        return self.parse_record(row, f"hub {source} {split} row {index}", split, index, math500)

    def parse_record(
        self, record: dict[str, Any], where: str, split: str, index: int, math500: bool
    ) -> Example | None:
        """One record of the MATH-500 schema (``math500``: ``answer``, ``subject``) or of the
        MATH one (``type``, answer boxed in ``solution``); ``where`` names the file and line
        for errors. None (with a warning, noted in :attr:`skipped`) when the solution's
        last box is empty."""
        problem = field(record, "problem", where)
        solution = field(record, "solution", where)
        if math500:
            answer = field(record, "answer", where).strip()
            if not answer:
                raise DataError(f"{where}: field 'answer' is empty")
        else:
            boxes = boxed_contents(solution)
            if not boxes:
                raise DataError(f"{where}: field 'solution' has no \\boxed{{...}} final answer")
            answer = boxes[-1]
            if not answer:
                logger.warning("%s: field 'solution' boxes nothing; item skipped", where)
                self.skipped.setdefault(split, []).append(where)
                return None
        subject = field(record, "subject" if math500 else "type", where)
        level = field(record, "level", where, (str, int))
        meta: dict[str, Any] = {"subject": subject, "level": _level(level)}
        if "unique_id" in record:
            meta["unique_id"] = field(record, "unique_id", where)
            ident = meta["unique_id"]
        elif "idx" in record:
            meta["idx"] = field(record, "idx", where, int)
            ident = f"{split}/{meta['idx']}"
        else:  # hub rows of hendrycks_math: index counts within one subject config
            ident = f"{split}/{subject_key(subject)}/{index}"
        return Example(id=ident, question=problem, answer=answer, rationale=solution, meta=meta)

    def extract(self, completion: str) -> str | None:
        """The final answer of ``completion`` (see :func:`extract_answer`)."""
        return extract_answer(completion)

    def is_correct(self, completion: str, example: Example) -> bool:
        """Whether the extracted answer is equivalent to the gold one (:func:`answers_match`)."""
        predicted = self.extract(completion)
        return predicted is not None and answers_match(example.answer, predicted)


@register("math500")
def math500(subset: str | None = None, **kwargs: Any) -> MathTask:
    """MATH-500: the same as ``math:math500``."""
    if subset is not None:
        raise ValueError(f"task math500 has no subsets (got {subset!r}); use math:<subject>")
    return MathTask(subset=MATH500, **kwargs)
