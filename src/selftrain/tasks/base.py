"""Core task types: a single example and the protocol every task implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Example", "Task"]


@dataclass(frozen=True)
class Example:
    """One problem with its gold answer and (optionally) a gold chain of thought."""

    id: str
    question: str
    answer: str
    rationale: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict suitable for one JSONL line."""
        return {
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "rationale": self.rationale,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        """Inverse of :meth:`to_dict`; ``rationale`` and ``meta`` may be missing."""
        return cls(
            id=str(d["id"]),
            question=str(d["question"]),
            answer=str(d["answer"]),
            rationale=d.get("rationale"),
            meta=dict(d.get("meta") or {}),
        )


@runtime_checkable
class Task(Protocol):
    """A source of examples plus the rules for prompting and judging a model on them."""

    name: str

    def splits(self) -> list[str]:
        """Names of the available splits."""
        ...

    def load(self, split: str, n: int | None = None) -> list[Example]:
        """The first ``n`` examples of ``split`` (all when ``n`` is None)."""
        ...

    def prompt(self, example: Example) -> str:
        """User-turn text shown to the model (no chat template applied)."""
        ...

    def extract(self, completion: str) -> str | None:
        """The answer in a model completion, normalised, or None."""
        ...

    def is_correct(self, completion: str, example: Example) -> bool:
        """Whether a completion's answer matches the example's gold answer."""
        ...
