"""Your own data set as a task, from recipe keys alone: ``task: {name: custom, args: {...}}``.

Where the rows come from (one of):

- ``path``: one JSONL, JSON (an array), CSV (a header row) or parquet file. ``split_sizes``
  (``{train: 300, test: 100}``) cuts it into splits, in the order written; without it the whole file
  is the ``test`` split (enough for ``selftrain eval``).
- ``files``: ``{split: path}`` for data already split.
- ``hub`` (and ``hub_config``): a Hugging Face hub dataset read with ``datasets``, our splits
  mapped to its splits by ``hub_splits`` (default ``{train: train, test: test}``), or its one
  split ``hub_split`` cut by ``split_sizes``.

Relative paths are read from the current directory. What a row holds: ``question_field``,
``answer_field``, the optional ``rationale_field`` (gold rationales: the ``gold`` teacher and
DPO-ST's warm-up train on them; a row may leave it out or empty; the final answer line is
added when a rationale does not state the answer), ``options_field`` (multiple choice: one
field holding the list, in CSV a JSON array, or a list of fields, one per option) and
``id_field``; dotted names reach into nested objects. ``answer_type`` picks the existing
family that prompts and judges:
``number`` (:class:`NumberTask`), ``choice`` (:class:`ChoiceTask`; the answer is a letter,
the option's text or its 0-based index), ``math`` (:class:`MathTask`, math-verify) or
``yes_no`` (:class:`StrategyQA`; yes/no/true/false). A malformed row is a DataError naming
the file, the line (or row) and the field. ``label`` names the task in results.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selftrain.records import sha256
from selftrain.tasks import register
from selftrain.tasks.base import Example
from selftrain.tasks.benchmark import BenchmarkTask, letters
from selftrain.tasks.choice import ChoiceTask, choice_example
from selftrain.tasks.competition_math import MathTask
from selftrain.tasks.data import (
    DataError,
    field,
    load_hub,
    read_csv_rows,
    read_json_array,
    read_jsonl_records,
)
from selftrain.tasks.math_word import NumberTask
from selftrain.tasks.yesno import StrategyQA
from selftrain.verify.numbers import canonical_number

__all__ = ["ANSWER_TYPES", "FORMATS", "CustomTask", "custom", "read_rows"]

FORMATS = (".jsonl", ".json", ".csv", ".parquet")
ANSWER_TYPES = ("number", "choice", "math", "yes_no")
_YES_NO = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}

Row = tuple[str, dict[str, Any]]  # (where: "file:line" or "file: row N", record)


def _arg(key: str) -> str:
    return f"task.args.{key}"


def read_rows(path: Path) -> list[Row]:
    """Every record of a JSONL, JSON, CSV or parquet file with where it is (file and line)."""
    if not path.is_file():
        where = f" (relative paths are read from {Path.cwd()})" if not path.is_absolute() else ""
        raise DataError(f"{path}: file not found{where}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [(f"{path}:{line}", rec) for line, rec in read_jsonl_records(path)]
    if suffix == ".json":
        return [(f"{path}: record {i}", rec) for i, rec in read_json_array(path)]
    if suffix == ".csv":
        return list(_csv_records(path))
    if suffix == ".parquet":
        return [(f"{path}: row {i}", rec) for i, rec in enumerate(_parquet(path), start=1)]
    raise DataError(f"{path}: unknown format {suffix or '(no suffix)'}; use {', '.join(FORMATS)}")


def _csv_records(path: Path) -> Iterator[Row]:
    header: list[str] | None = None
    for line, cells in read_csv_rows(path):
        if header is None:
            header = [c.strip() for c in cells]
            continue
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise DataError(f"{path}:{line}: has {len(cells)} cells, the header has {len(header)}")
        yield f"{path}:{line}", dict(zip(header, cells, strict=True))


def _has(record: dict[str, Any], name: str) -> bool:
    """Whether the dotted field ``name`` is there (an optional field may be left out)."""
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def _parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq  # installed with datasets

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # ArrowInvalid and friends
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc


class CustomTask(BenchmarkTask):
    """The data half of a custom task: rows from files or the hub turned into Examples. A
    subclass per answer type mixes in the family that prompts and judges (see ``custom``)."""

    answer_type = "number"

    def __init__(
        self,
        *,
        path: str | None = None,
        files: dict[str, str] | None = None,
        hub: str | None = None,
        hub_config: str | None = None,
        hub_splits: dict[str, str] | None = None,
        hub_split: str = "train",
        split_sizes: dict[str, int] | None = None,
        question_field: str = "question",
        answer_field: str = "answer",
        rationale_field: str | None = None,
        options_field: str | list[str] | None = None,
        id_field: str | None = None,
        label: str = "custom",
        style: str = "cot",
        n_shots: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(style=style, n_shots=n_shots, seed=seed)
        sources = [k for k, v in (("path", path), ("files", files), ("hub", hub)) if v]
        if len(sources) > 1:
            raise DataError(f"task custom: give one of {_arg('path')}, files or hub, not both")
        if split_sizes is not None:
            if files or not split_sizes:
                raise DataError(f"{_arg('split_sizes')} cuts one file or hub split into splits")
            for split, size in split_sizes.items():
                if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                    raise DataError(f"{_arg('split_sizes')}.{split} should be a count > 0")
        if self.answer_type == "choice" and not options_field:
            raise DataError(f"answer_type choice needs {_arg('options_field')}")
        self.data_path, self.custom_files, self.hub = path, dict(files or {}), hub
        self.hub_config, self.hub_split = hub_config, hub_split
        self.custom_hub_splits = dict(hub_splits or {"train": "train", "test": "test"})
        self.split_sizes = dict(split_sizes or {})
        self.fields = {
            "question": question_field,
            "answer": answer_field,
            "rationale": rationale_field,
            "options": options_field,
            "id": id_field,
        }
        self.name = label
        names = self.splits() if sources else []
        self.test_split = "test" if "test" in names or not names else names[-1]
        self.train_split = "train" if "train" in names else None

    # -- where the rows are ------------------------------------------------------------------

    def splits(self) -> list[str]:
        if self.split_sizes:
            return list(self.split_sizes)
        if self.custom_files:
            return list(self.custom_files)
        if self.hub:
            return list(self.custom_hub_splits)
        if self.data_path:
            return ["test"]
        raise DataError(
            f"task custom reads your data: set {_arg('path')}, files or hub "
            "(README: Train on your own data)"
        )

    def split_location(self, split: str) -> str:
        if self.hub:
            hub_split = self.hub_split if self.split_sizes else self.custom_hub_splits[split]
            return f"the hub dataset {self.hub} ({hub_split} split)"
        return str(self.custom_files.get(split) or self.data_path)

    def _source_rows(self, split: str) -> list[Row]:
        """The rows of ``split``'s source (the whole file or hub split when it is cut)."""
        if self.hub:
            hub_split = self.hub_split if self.split_sizes else self.custom_hub_splits[split]
            try:
                rows = load_hub(self.hub, self.hub_config, hub_split)
            except DataError as exc:
                raise DataError(
                    f"{_arg('hub')} {self.hub}: {exc.__cause__ or exc}; offline, download it "
                    f"once and give {_arg('path')} or files instead"
                ) from None
            return [(f"{self.hub} ({hub_split} split) row {i}", r) for i, r in enumerate(rows)]
        return read_rows(Path(self.custom_files.get(split) or self.data_path or "").expanduser())

    def read_split(self, split: str) -> list[Example]:
        rows = self._source_rows(split)
        if self.split_sizes:
            total = sum(self.split_sizes.values())
            if len(rows) < total:
                raise DataError(
                    f"{self.split_location(split)}: has {len(rows)} rows, fewer than the "
                    f"{total} that {_arg('split_sizes')} asks for"
                )
            start = 0
            for name, size in self.split_sizes.items():
                if name == split:
                    break
                start += size
            rows = rows[start : start + self.split_sizes[split]]
        examples, seen = [], {}
        for i, (where, record) in enumerate(rows):
            example = self.parse_row(record, where, split, i)
            if example.id in seen:
                raise DataError(f"{where}: id {example.id!r} is also the id of {seen[example.id]}")
            seen[example.id] = where
            examples.append(example)
        return examples

    def data_key(self) -> str:
        """A hash of the data and of how it is read: evaluation answers cached under another
        key are not reused (an edited file is a new key). Hub data: its name and config."""
        sources: dict[str, Any] = {"hub": self.hub, "hub_config": self.hub_config}
        for split in self.splits():
            if not self.hub:
                path = Path(self.custom_files.get(split) or self.data_path or "").expanduser()
                sources[split] = sha256(path)[0] if path.is_file() else None
        settings = {
            "type": self.answer_type,
            "fields": self.fields,
            "split_sizes": list(self.split_sizes.items()),  # the order cuts the file
            "hub_splits": self.custom_hub_splits,
            "hub_split": self.hub_split,
            "sources": sources,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    # -- one row -------------------------------------------------------------------------------

    def parse_row(self, record: dict[str, Any], where: str, split: str, index: int) -> Example:
        """One row as an Example (see the module docstring for the fields)."""
        question = field(record, self.fields["question"], where)
        if not question.strip():
            raise DataError(f"{where}: field {self.fields['question']!r} is empty")
        raw = field(record, self.fields["answer"], where, (str, int, float, bool))
        ident = f"{self.name}/{split}/{index}"
        if self.fields["id"]:
            ident = f"{self.name}/{field(record, self.fields['id'], where, (str, int))}"
        rationale = None
        if self.fields["rationale"] and _has(record, self.fields["rationale"]):
            value = field(record, self.fields["rationale"], where, (str, type(None)))
            rationale = value.strip() if value and value.strip() else None
        example = self.example(record, where, ident, question.strip(), raw)
        if rationale and not self.is_correct(rationale, example):
            rationale = f"{rationale}\n{self.target(example)}"
        return Example(example.id, example.question, example.answer, rationale, example.meta)

    def example(
        self, record: dict[str, Any], where: str, ident: str, question: str, raw: Any
    ) -> Example:
        """The Example with its gold answer in this answer type's form."""
        raise NotImplementedError

    def _bad_answer(self, where: str, raw: Any, expected: str) -> DataError:
        return DataError(f"{where}: field {self.fields['answer']!r} is {raw!r}, not {expected}")


class CustomNumber(CustomTask, NumberTask):
    """Numeric answers, judged with a tolerance (:class:`NumberTask`)."""

    answer_type = "number"

    def example(
        self, record: dict[str, Any], where: str, ident: str, question: str, raw: Any
    ) -> Example:
        gold = None if isinstance(raw, bool) else canonical_number(raw)
        if gold is None:
            raise self._bad_answer(where, raw, "a number")
        return Example(ident, question, gold)


class CustomChoice(CustomTask, ChoiceTask):
    """Multiple choice (:class:`ChoiceTask`): letter answers, the options in ``meta``."""

    answer_type = "choice"
    n_options = 2  # raised to the most options a loaded row has

    def example(
        self, record: dict[str, Any], where: str, ident: str, question: str, raw: Any
    ) -> Example:
        options = self._options(record, where)
        labels = letters(len(options))
        text = str(raw).strip()
        if text in labels:
            gold = labels.index(text)
        elif text in options:
            gold = options.index(text)
        elif text.isdigit() and int(text) < len(options) and not isinstance(raw, bool):
            gold = int(text)
        else:
            raise self._bad_answer(
                where, raw, f"a letter {labels[0]}-{labels[-1]}, an option or its index"
            )
        self.n_options = max(self.n_options, len(options))
        return choice_example(ident, question, options, gold, where)

    def _options(self, record: dict[str, Any], where: str) -> list[str]:
        name = self.fields["options"]
        if isinstance(name, list):
            return [str(field(record, column, where, (str, int, float))) for column in name]
        value = field(record, str(name), where, (list, str))
        if isinstance(value, str):  # a CSV cell: a JSON array
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = None
        if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
            raise DataError(
                f"{where}: field {name!r} should be a list of options (in CSV a JSON array "
                'such as ["red", "blue"], or options_field a list of columns)'
            )
        return [str(v) for v in value]


class CustomMath(CustomTask, MathTask):
    """LaTeX answers judged with math-verify (:class:`MathTask`)."""

    answer_type = "math"

    def example(
        self, record: dict[str, Any], where: str, ident: str, question: str, raw: Any
    ) -> Example:
        gold = str(raw).strip() if not isinstance(raw, bool) else ""
        if not gold:
            raise self._bad_answer(where, raw, "an answer (LaTeX or a number)")
        return Example(ident, question, gold)


class CustomYesNo(CustomTask, StrategyQA):
    """Yes/no questions (:class:`StrategyQA`'s judging and log-likelihood options)."""

    answer_type = "yes_no"

    def example(
        self, record: dict[str, Any], where: str, ident: str, question: str, raw: Any
    ) -> Example:
        if isinstance(raw, bool):
            return Example(ident, question, "yes" if raw else "no")
        gold = _YES_NO.get(str(raw).strip().lower())
        if gold is None:
            raise self._bad_answer(where, raw, "yes, no, true or false")
        return Example(ident, question, gold)


_TYPES: dict[str, type[CustomTask]] = {
    "number": CustomNumber,
    "choice": CustomChoice,
    "math": CustomMath,
    "yes_no": CustomYesNo,
}
_KEYS = [key for key in inspect.signature(CustomTask.__init__).parameters if key != "self"]


@register("custom")
def custom(answer_type: str = "number", subset: str | None = None, **args: Any) -> CustomTask:
    """A custom task from recipe keys (``task.args``; see the module docstring)."""
    if answer_type not in _TYPES:
        raise DataError(
            f"{_arg('answer_type')} is {answer_type!r}; use one of {', '.join(ANSWER_TYPES)}"
        )
    if subset is not None:
        raise DataError(f"task custom has no subsets (got custom:{subset})")
    unknown = sorted(set(args) - set(_KEYS))
    if unknown:
        raise DataError(
            f"{_arg(unknown[0])} is not a key of task custom; its keys: "
            f"{', '.join(['answer_type', *_KEYS])}"
        )
    return _TYPES[answer_type](**args)
