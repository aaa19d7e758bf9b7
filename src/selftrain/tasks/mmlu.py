"""MMLU: four-option questions in 57 subjects (``mmlu``, ``mmlu:stem``, ``mmlu:anatomy``, ...).

The subject table (subject -> group) is data, ``mmlu_subjects.json`` beside this module: the
categories of the original release (hendrycks/test, categories.py). lm-eval-harness differs in
one subject: it puts anatomy under STEM.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from selftrain.tasks import register
from selftrain.tasks.base import Example
from selftrain.tasks.benchmark import letters
from selftrain.tasks.choice import ChoiceTask, choice_example, gold_index
from selftrain.tasks.data import DataError, field, read_csv_rows, require_file

__all__ = ["MMLU", "MMLU_GROUPS", "MMLU_SUBJECTS", "mmlu_subjects"]

_TABLE: dict[str, Any] = json.loads(
    resources.files("selftrain.tasks").joinpath("mmlu_subjects.json").read_text(encoding="utf-8")
)
MMLU_GROUPS: tuple[str, ...] = tuple(_TABLE["groups"])
MMLU_SUBJECTS: dict[str, str] = dict(_TABLE["subjects"])  # subject -> group


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
                gold = gold_index(row[5], letters(4), where, "answer (column 6)")
                examples.append(
                    choice_example(
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
            else gold_index(str(answer), labels, where, "answer")
        )
        subject = row.get("subject") or self.hub_config or ""
        return choice_example(
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
