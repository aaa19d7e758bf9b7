"""Yes/no benchmarks (``kind = "yesno"``): ``strategyqa``, whose ``answer`` is ``"yes"`` or
``"no"``. Judging is :func:`selftrain.verify.choices.extract_yes_no`; for log-likelihood
scoring the continuations are ``" yes"`` and ``" no"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from selftrain.tasks import register
from selftrain.tasks.base import Example
from selftrain.tasks.benchmark import BenchmarkTask
from selftrain.tasks.data import DataError, field, read_json_array, require_file
from selftrain.verify.choices import extract_yes_no

__all__ = ["StrategyQA"]


@register("strategyqa")
class StrategyQA(BenchmarkTask):
    """StrategyQA yes/no questions (the BIG-bench copy of the 2,290 labelled questions);
    ``rationale`` is the supporting facts. On the hub these are tasksource/strategy-qa's
    ``train`` split, which is our ``test`` split."""

    name: ClassVar[str] = "strategyqa"
    kind: ClassVar[str] = "yesno"

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
