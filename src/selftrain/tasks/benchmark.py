"""Shared machinery of the real benchmarks: splits read once, prompting styles, judging.

Where each benchmark's splits live is data, ``sources.json`` beside this module, keyed by
task name: ``files`` (split -> relative path under the data directory), ``hub_name``,
``hub_config``, ``hub_splits`` (our split -> hub split) for the Hugging Face hub, and
``test_split`` / ``train_split`` where they differ from the defaults below. A subclass whose
``name`` is in that table gets those class attributes when it is defined; it only turns raw
records into :class:`Example` objects (``read_split`` for our files, ``parse_hub`` for one hub
row). This base class does the rest: caching, ``n`` limits, prompts (chain of thought,
direct, few-shot), the gold answer written as a model would write it, and the continuations
scored by log-likelihood for multiple choice.

Kinds of answer:
- ``number``: ``answer`` is a canonical number string; judged with a tolerance.
- ``choice``: ``answer`` is a letter; ``meta["choices"]`` holds the option texts in order.
- ``yesno``: ``answer`` is ``"yes"`` or ``"no"``.
- ``math``: ``answer`` is a LaTeX expression; judged with math-verify.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from selftrain.tasks.base import Example
from selftrain.tasks.data import DataError, data_dir, load_hub

__all__ = ["COT_TRIGGER", "PROMPT_STYLES", "SOURCES", "BenchmarkTask", "letters", "load_sources"]

PROMPT_STYLES = ("cot", "direct", "fewshot")
COT_TRIGGER = "Let's think step by step."


# The attributes a task's entry in sources.json may set (see the module docstring).
SOURCE_KEYS = ("files", "hub_name", "hub_config", "hub_splits", "test_split", "train_split")


def load_sources() -> dict[str, dict[str, Any]]:
    """``sources.json``: task name -> its data-location attributes (unknown keys are errors)."""
    text = resources.files("selftrain.tasks").joinpath("sources.json").read_text("utf-8")
    table: dict[str, dict[str, Any]] = json.loads(text)
    for task, entry in table.items():
        unknown = sorted(set(entry) - set(SOURCE_KEYS))
        if unknown:
            raise ValueError(
                f"sources.json: task {task!r} has unknown key {unknown[0]!r} "
                f"(allowed: {', '.join(SOURCE_KEYS)})"
            )
    return table


SOURCES = load_sources()


def letters(n: int) -> list[str]:
    """``["A", "B", ...]`` for ``n`` options."""
    return [chr(ord("A") + i) for i in range(n)]


class BenchmarkTask:
    """Base of every file-backed benchmark task (see the module docstring)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "number"  # number | choice | yesno | math
    files: ClassVar[dict[str, str]] = {}  # split -> path relative to the data directory
    hub_name: ClassVar[str | None] = None  # e.g. "openai/gsm8k"
    hub_config: ClassVar[str | None] = None
    hub_splits: ClassVar[dict[str, str]] = {}  # our split -> hub split
    test_split: ClassVar[str] = "test"  # the split evaluated by default
    train_split: ClassVar[str | None] = None  # source of few-shot examples and training data

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Fill in the data-location attributes of a task named in ``sources.json``."""
        super().__init_subclass__(**kwargs)
        entry = SOURCES.get(cls.__dict__.get("name", ""), {})
        for key, value in entry.items():
            if key in cls.__dict__:
                raise TypeError(f"{cls.__name__}.{key} is set both in its class and sources.json")
            setattr(cls, key, value)

    def __init__(
        self,
        *,
        data_dir: str | Path | None = None,
        source: str = "files",
        style: str = "cot",
        n_shots: int = 4,
        seed: int = 0,
    ) -> None:
        """``source``: ``"files"`` (the data directory) or ``"hub"`` (``datasets``);
        ``style``: one of :data:`PROMPT_STYLES`; ``n_shots``: few-shot examples."""
        if source not in ("files", "hub"):
            raise ValueError(f"source must be 'files' or 'hub', not {source!r}")
        if style not in PROMPT_STYLES:
            raise ValueError(f"style must be one of {', '.join(PROMPT_STYLES)}, not {style!r}")
        if source == "hub" and not self.hub_name:
            raise ValueError(f"task {self.name} has no hub source; use the local files")
        self._data_dir = data_dir
        self.source = source
        self.style = style
        self.n_shots = n_shots
        self.seed = seed
        self._cache: dict[str, list[Example]] = {}
        self._shots: list[Example] | None = None

    # -- data ----------------------------------------------------------------------------

    def splits(self) -> list[str]:
        """Names of the splits this task has from its current source."""
        return list(self.hub_splits if self.source == "hub" else self.files)

    @property
    def root(self) -> Path:
        """The data directory (resolved on first use)."""
        return data_dir(self._data_dir)

    def load(self, split: str | None = None, n: int | None = None) -> list[Example]:
        """The first ``n`` examples of ``split`` (default: the test split)."""
        split = split or self.test_split
        if split not in self.splits():
            raise ValueError(
                f"task {self.name} has no split {split!r}; it has {', '.join(self.splits())}"
            )
        if n is not None and n < 0:
            raise ValueError("n must be non-negative")
        if split not in self._cache:
            if self.source == "hub":
                rows = load_hub(self.hub_name or "", self.hub_config, self.hub_splits[split])
                examples = [self.parse_hub(row, split, i) for i, row in enumerate(rows)]
            else:
                examples = self.read_split(split)
            if not examples:
                raise DataError(
                    f"task {self.name}: split {split!r} has no records in "
                    f"{self.split_location(split)}; check that file (or the --data-dir)"
                )
            self._cache[split] = examples
        examples = self._cache[split]
        return list(examples if n is None else examples[:n])

    def split_location(self, split: str) -> str:
        """Where ``split`` is read from, for error messages: its file, or the hub dataset."""
        if self.source == "hub":
            return f"the hub dataset {self.hub_name} ({self.hub_splits[split]} split)"
        return str(self.root / self.files[split])

    def read_split(self, split: str) -> list[Example]:
        """All examples of ``split`` from the data directory (subclasses override)."""
        raise NotImplementedError

    def parse_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        """One hub row as an Example (subclasses with a hub source override)."""
        raise NotImplementedError

    def hub_where(self, split: str, index: int) -> str:
        """Where a hub row came from, for error messages."""
        return f"{self.hub_name} ({self.hub_splits.get(split, split)} split) row {index}"

    def sizes(self) -> dict[str, int]:
        """Number of examples in each split."""
        return {split: len(self.load(split)) for split in self.splits()}

    # -- prompting -----------------------------------------------------------------------

    def body(self, example: Example) -> str:
        """The question as shown to the model, with its options for multiple choice."""
        choices = example.meta.get("choices")
        if not choices:
            return example.question
        options = " ".join(
            f"({lab}) {text}" for lab, text in zip(letters(len(choices)), choices, strict=True)
        )
        return f"{example.question}\nAnswer Choices: {options}"

    def instruction(self) -> str:
        """What the final line of the answer should look like."""
        if self.kind == "choice":
            return "End with 'The answer is X.' where X is the letter of the correct choice."
        if self.kind == "yesno":
            return "End with 'The answer is yes.' or 'The answer is no.'"
        if self.kind == "math":
            return "Put the final answer in \\boxed{}."
        return "End with 'The answer is N.' where N is a number."

    def prompt(self, example: Example) -> str:
        """User-turn text for ``example`` in this task's prompting style."""
        body = self.body(example)
        if self.style == "direct":
            return f"{body}\n{self.instruction()} Give only the answer, no explanation."
        if self.style == "cot":
            return f"{body}\n{self.instruction()}\n{COT_TRIGGER}"
        shots = self.few_shot_examples()
        parts = [f"Question: {self.body(s)}\nAnswer: {self.solution(s)}" for s in shots]
        parts.append(f"Question: {body}\nAnswer:")
        return f"{self.instruction()}\n\n" + "\n\n".join(parts)

    def few_shot_examples(self) -> list[Example]:
        """``n_shots`` fixed examples from the train split (empty if there is none)."""
        if self._shots is None:
            pool = self.load(self.train_split) if self.train_split else []
            rng = random.Random(self.seed)
            self._shots = rng.sample(pool, min(self.n_shots, len(pool)))
        return list(self._shots)

    def solution(self, example: Example) -> str:
        """A worked answer for a few-shot example: its rationale (if any) and final line."""
        final = self.target(example)
        rationale = (example.rationale or "").strip()
        return f"{rationale}\n{final}" if rationale else final

    def target(self, example: Example) -> str:
        """The gold answer written the way a model is asked to write it."""
        if self.kind == "math":
            return f"The answer is $\\boxed{{{example.answer}}}$."
        return f"The answer is {example.answer}."

    # -- judging -------------------------------------------------------------------------

    def extract(self, completion: str) -> str | None:
        """The answer in ``completion``, normalised, or None (subclasses override)."""
        raise NotImplementedError

    def is_correct(self, completion: str, example: Example) -> bool:
        """Whether ``completion`` answers ``example`` correctly (default: extracted ==
        gold; numeric and math tasks override with tolerant comparisons)."""
        predicted = self.extract(completion)
        return predicted is not None and predicted == example.answer

    def choice_continuations(self, example: Example) -> Sequence[str]:
        """Texts scored by log-likelihood for each option (multiple choice only)."""
        choices = example.meta.get("choices")
        if not choices:
            raise ValueError(f"task {self.name} is not multiple choice")
        return [f" {text}" for text in choices]

    def choice_answers(self, example: Example) -> list[str]:
        """The answer each of :meth:`choice_continuations` stands for, in the same order: a
        log-likelihood scorer whose best continuation is ``i`` predicts ``choice_answers(ex)[i]``
        (letters here; yes/no tasks override with ``["yes", "no"]``)."""
        return letters(len(self.choice_continuations(example)))

    # Decoding stops once the line stating the answer has ended, or when a few-shot model
    # starts writing the next question (the chat model usually ends with EOS before either).
    # The marker must be followed by something on its line: "The answer is:" then a newline
    # is not the end (the answer comes on the next line).
    stop_regex: ClassVar[str] = r"(?:answer is|answer:|\\boxed\{)[^\n]*[\w)}][^\n]*\n|\nQuestion:"

    def max_new_tokens(self) -> int:
        """A decoding budget that fits this task's answers."""
        if self.style == "direct":
            return 32
        return 512 if self.kind == "math" else 256
