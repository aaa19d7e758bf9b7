"""What every teacher is: requests in, completions out, as they arrive.

A teacher answers :class:`Request` objects (one question, one sample index, its chat
messages) and yields a :class:`Completion` for each, in any order. It does not judge the
answers: the demos runner (``teachers.demos``) verifies them against the ground truth, keeps
or rejects them, and writes them down.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from selftrain.tasks.base import Example

__all__ = ["Completion", "FatalTeacherError", "Request", "Teacher", "TeacherError"]

Messages = list[dict[str, str]]


class TeacherError(RuntimeError):
    """A teacher that cannot be used, or a demos stage that could not finish."""


class FatalTeacherError(TeacherError):
    """An error every further request would repeat (a wrong key, URL or model): stop the run."""


@dataclass(frozen=True)
class Request:
    """One demonstration to ask for: sample ``sample`` of question ``qid``."""

    qid: str
    sample: int
    messages: Messages
    example: Example


@dataclass(frozen=True)
class Completion:
    """A teacher's answer to a request, or why there is none (``error``, after retries)."""

    request: Request
    text: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    attempts: int = 1
    cached: bool = False

    @property
    def answered(self) -> bool:
        return self.error is None


@dataclass
class TransportStats:
    """What it took to get the answers: HTTP requests made, retries, errors by kind."""

    requests: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "retries": self.retries, "errors": dict(self.errors)}


class Teacher(ABC):
    """A source of demonstrations.

    ``identity`` names it in every demonstration it writes ("api:gpt-4o-mini",
    "hf:smollm2-135m-instruct", "gold", "solver"); ``family`` is an optional label for
    reports (in-family / out-family). ``cacheable`` teachers (the paid ones) have their answers
    kept in the on-disk cache under :meth:`signature`; ``deterministic`` teachers give the same
    text every time, so one sample per question is all they are asked for.
    """

    identity: str = ""
    family: str | None = None
    cacheable: bool = False
    deterministic: bool = False

    def __init__(self) -> None:
        self.transport = TransportStats()

    def signature(self, request: Request) -> dict[str, Any]:
        """Everything that decides the answer (the cache key's content)."""
        return {"teacher": self.identity, "messages": request.messages, "sample": request.sample}

    @abstractmethod
    def complete(self, requests: Sequence[Request]) -> AsyncIterator[Completion]:
        """Yield one completion per request, as each arrives (any order)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r})"
